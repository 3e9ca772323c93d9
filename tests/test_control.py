"""The control plane against a real moto_server: edge records in Route53, the takedown feed."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from atcdn.core import cid as cids
from atcdn.core.feed import Feed, Follower
from atcdn.core.settings import ControlSettings

from tests.helpers.env import ROOT
from tests.helpers.servers import atcdn

RECORD = "cdn.test.example"


@pytest.fixture(scope="module")
def zone(moto: dict[str, str]) -> Iterator[dict[str, str]]:
    route53 = boto3.client("route53", endpoint_url=moto["ATCDN_AWS_ENDPOINT_URL"],
                           region_name="us-east-1", aws_access_key_id="testing",
                           aws_secret_access_key="testing")
    answer = route53.create_hosted_zone(Name="test.example.", CallerReference="atcdn-test")
    zone_id = answer["HostedZone"]["Id"].rsplit("/", 1)[-1]
    yield {**moto, "ATCDN_HOSTED_ZONE_ID": zone_id, "ATCDN_EDGE_RECORD_NAME": RECORD,
           "ATCDN_TAKEDOWN_TABLE": "atcdn-takedowns-test"}


def control(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    """Run ``atcdn control ...`` as a real process; its JSON lines."""
    done = subprocess.run(atcdn("control", *args), env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def route53(env: dict[str, str]) -> Any:
    return boto3.client("route53", endpoint_url=env["ATCDN_AWS_ENDPOINT_URL"],
                        region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def edge_sets(env: dict[str, str]) -> list[dict[str, Any]]:
    sets = route53(env).list_resource_record_sets(
        HostedZoneId=env["ATCDN_HOSTED_ZONE_ID"])["ResourceRecordSets"]
    return [s for s in sets if s["Name"] == RECORD + "." and s["Type"] in ("A", "AAAA")]


def health_checks(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {c["Id"]: c for c in route53(env).list_health_checks()["HealthChecks"]}


def test_weighted_edge_appears_and_disappears(zone: dict[str, str]) -> None:
    [out] = control(zone, "register-edge", "--name", "fra1", "--ip", "192.0.2.10",
                    "--ipv6", "2001:db8::10", "--weight", "50")
    check_id = out["health_check_id"]

    records = {s["Type"]: s for s in edge_sets(zone) if s.get("SetIdentifier") == "fra1"}
    assert set(records) == {"A", "AAAA"}
    assert records["A"]["ResourceRecords"] == [{"Value": "192.0.2.10"}]
    assert records["AAAA"]["ResourceRecords"] == [{"Value": "2001:db8::10"}]
    assert all(int(r["Weight"]) == 50 for r in records.values())
    assert all(r["HealthCheckId"] == check_id for r in records.values())
    config = health_checks(zone)[check_id]["HealthCheckConfig"]
    assert config["IPAddress"] == "192.0.2.10"
    assert config["ResourcePath"] == "/health"
    assert int(config["Port"]) == 443

    [gone] = control(zone, "deregister-edge", "--name", "fra1")
    assert gone["records_removed"] == 2
    assert [s for s in edge_sets(zone) if s.get("SetIdentifier") == "fra1"] == []
    assert check_id not in health_checks(zone)


def test_latency_edges_are_told_apart(zone: dict[str, str]) -> None:
    [a] = control(zone, "register-edge", "--name", "ams1", "--ip", "192.0.2.21",
                  "--latency-region", "eu-west-1")
    [b] = control(zone, "register-edge", "--name", "iad1", "--ip", "192.0.2.22",
                  "--latency-region", "us-east-1")
    regions = {s["SetIdentifier"]: s["Region"] for s in edge_sets(zone)}
    assert regions == {"ams1": "eu-west-1", "iad1": "us-east-1"}

    # Re-registering (a new address) replaces the record and its health check.
    [a2] = control(zone, "register-edge", "--name", "ams1", "--ip", "192.0.2.31",
                   "--latency-region", "eu-west-1")
    checks = health_checks(zone)
    assert a["health_check_id"] not in checks and a2["health_check_id"] in checks
    [ams] = [s for s in edge_sets(zone) if s["SetIdentifier"] == "ams1"]
    assert ams["ResourceRecords"] == [{"Value": "192.0.2.31"}]

    control(zone, "deregister-edge", "--name", "ams1")
    control(zone, "deregister-edge", "--name", "iad1")
    assert edge_sets(zone) == []
    assert not {a2["health_check_id"], b["health_check_id"]} & set(health_checks(zone))


def test_deregistering_an_unknown_edge_fails(zone: dict[str, str]) -> None:
    done = subprocess.run(atcdn("control", "deregister-edge", "--name", "nope"),
                          env={**os.environ, **zone}, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip() == "no records for edge 'nope'", done.stderr


def test_feed_is_ordered_and_followers_resume(zone: dict[str, str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in zone.items():
        monkeypatch.setenv(name, value)
    control(zone, "init-feed")
    blob = cids.compute(b"taken down")
    did = "did:plc:" + "a" * 24
    [t1] = control(zone, "takedown", "--cid", blob, "--reason", "test")
    [t2] = control(zone, "takedown", "--did", did)
    assert (t1["seq"], t2["seq"]) == (1, 2)
    assert [e["seq"] for e in control(zone, "feed")] == [1, 2]

    settings = ControlSettings()
    seen: list[tuple[int, str]] = []
    state = tmp_path / "position"
    follower = Follower(Feed(settings), lambda e: seen.append((e.seq, e.action)),
                        state_file=state, interval=0.1)
    assert follower.poll() == 2 and state.read_text().strip() == "2"

    [r] = control(zone, "restore", "--cid", blob)
    # A restarted follower resumes from its saved position: no replay, nothing missed.
    again = Follower(Feed(settings), lambda e: seen.append((e.seq, e.action)),
                     state_file=state, interval=0.1)
    assert again.poll() == 1
    assert seen == [(1, "takedown"), (2, "takedown"), (3, "restore")]
    assert [e["seq"] for e in control(zone, "feed", "--after", "2")] == [r["seq"]]


def test_bad_takedown_targets_are_refused(zone: dict[str, str]) -> None:
    # The table exists, so a publish that skipped validation would succeed and be seen.
    env = {**zone, "ATCDN_TAKEDOWN_TABLE": "atcdn-takedowns-refused"}
    control(env, "init-feed")
    refusals = {
        ("--cid", "bafynotacid"): "blob CIDs are 59 characters long, got 11",
        ("--did", "did:evil:x"): "unsupported DID method (did:plc and did:web only)",
    }
    for args, reason in refusals.items():
        done = subprocess.run(atcdn("control", "takedown", *args), env={**os.environ, **env},
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, args
        assert done.stderr.strip() == f"atcdn control takedown: {reason}", done.stderr
        assert done.stdout == ""
    assert control(env, "feed") == []  # nothing was written


def test_a_failed_apply_is_retried_not_skipped(zone: dict[str, str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in zone.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ATCDN_TAKEDOWN_TABLE", "atcdn-takedowns-retry")
    control({**zone, "ATCDN_TAKEDOWN_TABLE": "atcdn-takedowns-retry"}, "init-feed")
    feed = Feed(ControlSettings())
    feed.publish("takedown", cid=cids.compute(b"one"))
    feed.publish("takedown", cid=cids.compute(b"two"))
    calls: list[int] = []

    def flaky(event) -> None:
        calls.append(event.seq)
        if len(calls) == 2:
            raise RuntimeError("node busy")

    follower = Follower(feed, flaky, state_file=tmp_path / "pos", interval=0.1)
    with pytest.raises(RuntimeError):
        follower.poll()
    assert (tmp_path / "pos").read_text().strip() == "1"  # the failed event is not skipped
    assert follower.poll() == 1
    assert calls == [1, 2, 2]
