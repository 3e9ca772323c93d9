"""``atcdn ingest backfill`` against the reference PDS: an account's 60 blobs, the backfill
killed halfway and resumed, every blob stored once and fetched once; run again, nothing
moves."""

from __future__ import annotations

import io
import json
import signal
from collections import Counter
from pathlib import Path

import httpx
import pytest
from atcdn.ingest.progress import PlainReporter, RichReporter, Tally, make_reporter

from tests.helpers.env import ROOT, TOKEN
from tests.helpers.ingest import origin_status, wait_until
from tests.helpers.nodes import Origin
from tests.helpers.pds import ReferencePDS, User
from tests.helpers.pictures import encode, marked
from tests.helpers.servers import Process, atcdn

pytestmark = pytest.mark.timeout(900)

BLOBS = 60


@pytest.fixture(scope="module")
def holder(pds: ReferencePDS) -> tuple[User, list[str]]:
    """An account with 60 blobs (15 posts of 4 pictures)."""
    user = pds.create_account("gracehopper.test")
    cids: list[str] = []
    for post in range(BLOBS // 4):
        _, posted = user.post_images(*(encode(marked(40 + post, 30 + n)) for n in range(4)))
        cids += posted
    return user, cids


@pytest.fixture(scope="module")
def origin(module_origin: Origin) -> Origin:
    return module_origin


def backfill(pds: ReferencePDS, origin: Origin, data_dir: Path, log: Path, *target: str,
             rate: str = "1000") -> Process:
    return Process(
        atcdn("ingest", "backfill", *target, "--origin", origin.url, "--data-dir", str(data_dir),
              "--pds-rate", rate),
        env={"ATCDN_ORIGIN_TOKEN": TOKEN, "ATCDN_PLC_URL": pds.plc_url,
             "ATCDN_ALLOW_PRIVATE_NETWORKS": "1"}, log=log, cwd=ROOT)


def puts(origin: Origin, status: str) -> float:
    total = 0.0
    for line in httpx.get(f"{origin.url}/metrics").text.splitlines():
        if (line.startswith("atcdn_origin_requests_total{") and 'method="PUT"' in line
                and f'status="{status}"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def summary(log: Path) -> dict:
    return json.loads(log.read_text().strip().splitlines()[-1])


def test_killed_halfway_then_resumed(pds: ReferencePDS, origin: Origin,
                                     holder: tuple[User, list[str]], tmp_path: Path) -> None:
    user, cids = holder
    data = tmp_path / "ingest"
    # Slow enough (3 getBlob/s) to be killed in the middle.
    first = backfill(pds, origin, data, tmp_path / "first.log", "--did", user.did, rate="3")
    wait_until(lambda: puts(origin, "201") >= 15, 30, "a part of the blobs stored")
    first.stop(signal.SIGKILL)
    present = sum(origin_status(origin.url, c) == 200 for c in cids)
    assert 0 < present < BLOBS

    second = backfill(pds, origin, data, tmp_path / "second.log", "--did", user.did)
    assert second.popen.wait(120) == 0, second.tail()
    assert all(origin_status(origin.url, c) == 200 for c in cids)
    result = summary(tmp_path / "second.log")
    assert result["stored"] + result["already_present"] == BLOBS
    assert result["already_present"] >= present and result["failed"] == 0

    # Stored once each, fetched from the PDS once each.
    assert puts(origin, "201") == BLOBS and puts(origin, "200") == 0
    fetched = Counter(e["cid"] for e in pds.get_blob_log() if e["did"] == user.did)
    assert sorted(fetched) == sorted(cids)
    assert set(fetched.values()) == {1}, fetched


def test_again_over_the_whole_pds_moves_nothing(pds: ReferencePDS, origin: Origin,
                                                holder: tuple[User, list[str]],
                                                tmp_path: Path) -> None:
    user, cids = holder
    for cid in cids:  # (in case this test runs alone)
        if origin_status(origin.url, cid) != 200:
            httpx.put(f"{origin.url}/blob/{cid}", params={"did": user.did},
                      headers={"authorization": f"Bearer {TOKEN}"},
                      content=httpx.get(f"{pds.url}/xrpc/com.atproto.sync.getBlob",
                                        params={"did": user.did, "cid": cid}).content)
    fetched_before = len(pds.get_blob_log())
    log = tmp_path / "again.log"
    run = backfill(pds, origin, tmp_path / "ingest", log, "--pds", pds.url)
    assert run.popen.wait(120) == 0, run.tail()
    result = summary(log)
    assert result == {"stored": 0, "already_present": BLOBS, "refused_by_pds": 0, "skipped": 0,
                      "failed": 0, "accounts_failed": 0, "bytes_stored": 0}
    assert len(pds.get_blob_log()) == fetched_before  # presence is checked, nothing fetched
    assert "backfill: account" in log.read_text()  # plain progress lines off a terminal


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_plain_lines_otherwise() -> None:
    assert isinstance(make_reporter(io.StringIO()), PlainReporter)
    screen = FakeTerminal()
    reporter = make_reporter(screen)
    assert isinstance(reporter, RichReporter)
    tally = Tally()
    reporter.found(2)
    tally.add("stored")
    tally.bytes = 2_500_000
    reporter.advance(tally)
    reporter.close(tally)
    assert "1/2" in screen.getvalue() and "2.5 MB" in screen.getvalue()
