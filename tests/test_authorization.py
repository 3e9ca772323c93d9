"""Who may be served what, at a real origin process: holders, takedowns in three scopes,
the admin shape, the takedown feed, and the pulled tier's quotas (docs/authorization.md).

Regression tests for issue 9: hole 2 (naming another DID lifted an account takedown) and
hole 1 at the origin (a stranger's pulls grew the permanent store without bound).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from atcdn.core.cid import compute

from tests.helpers.env import ADMIN_TOKEN, ROOT, TOKEN
from tests.helpers.nodes import Origin, running_origin
from tests.helpers.servers import atcdn

AUTH = {"Authorization": f"Bearer {TOKEN}"}  # writes, hand-offs, reading the feed
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # takedown, restore
A = "did:plc:" + "a" * 24
B = "did:plc:" + "b" * 24
C = "did:web:c.example.com"
KB = 1024
QUOTA_DID = 300 * KB
QUOTA_PDS = 700 * KB
PULLED_MAX = 350 * KB


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    env = {"ATCDN_ORIGIN_PULLED_QUOTA_DID": str(QUOTA_DID),
           "ATCDN_ORIGIN_PULLED_QUOTA_PDS": str(QUOTA_PDS),
           "ATCDN_ORIGIN_PULLED_MAX_BYTES": str(PULLED_MAX)}
    with running_origin(tmp_path_factory.mktemp("authz"), env=env) as node:
        yield node


@pytest.fixture
def client(origin: Origin) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=origin.url, timeout=30.0) as client:
        yield client


def push(client: httpx.Client, data: bytes, did: str | None = None) -> str:
    params = {"did": did} if did else {}
    r = client.put(f"/blob/{compute(data)}", content=data, headers=AUTH, params=params)
    assert r.status_code in (200, 201), r.text
    return compute(data)


def handoff(client: httpx.Client, data: bytes, did: str,
            pds: str = "https://pds.example.com") -> httpx.Response:
    return client.put(f"/handoff/{compute(data)}", content=data, headers=AUTH,
                      params={"did": did, "pds": pds})


def admin(client: httpx.Client, action: str, **body: str) -> dict:
    r = client.post(f"/admin/{action}", json=body, headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()


def status(client: httpx.Client, cid: str, did: str | None = None) -> int:
    params = {"did": did} if did else {}
    blob = client.get(f"/blob/{cid}", params=params).status_code
    if did is not None:  # the xrpc route follows the same rule
        xrpc = client.get("/xrpc/com.atproto.sync.getBlob", params={"did": did, "cid": cid})
        assert xrpc.status_code == blob
    return blob


def test_naming_another_did_never_lifts_an_account_takedown(client: httpx.Client) -> None:
    only_a = push(client, os.urandom(64), A)
    shared = os.urandom(64)
    push(client, shared, A)
    shared = push(client, shared, B)
    assert status(client, only_a, A) == 200
    assert status(client, only_a, B) == 404  # B does not hold it: never served under B

    answer = admin(client, "takedown", did=A, reason="test")
    assert answer["scope"] == "did" and answer["changed"] is True and answer["seq"] >= 1
    assert status(client, only_a, A) == 451
    assert status(client, only_a, B) == 404  # hole 2: ?did=B used to answer 200
    assert status(client, only_a, C) == 404
    assert status(client, only_a) == 451  # by CID alone: every holder is taken down
    # Per-repo semantics: B genuinely holds the shared blob, so B's copy is served.
    assert status(client, shared, B) == 200
    assert status(client, shared, A) == 451
    assert status(client, shared) == 200

    again = admin(client, "takedown", did=A)
    assert again["changed"] is False and again["seq"] is None
    admin(client, "restore", did=A)
    assert status(client, only_a, A) == 200


def test_three_scopes(client: httpx.Client) -> None:
    data = os.urandom(64)
    push(client, data, A)
    cid = push(client, data, B)
    # (DID, CID): one repo's blob.
    pair = admin(client, "takedown", did=B, cid=cid)
    assert pair["scope"] == "did+cid"
    assert (status(client, cid, B), status(client, cid, A), status(client, cid)) == (451, 200, 200)
    # CID: the bytes, everywhere.
    assert admin(client, "takedown", cid=cid)["scope"] == "cid"
    assert (status(client, cid, A), status(client, cid)) == (451, 451)
    assert admin(client, "restore", cid=cid)["changed"] is True
    assert status(client, cid, A) == 200
    # A restore lifts exactly its own scope.
    assert admin(client, "restore", did=B)["changed"] is False
    assert status(client, cid, B) == 451
    admin(client, "restore", did=B, cid=cid)
    assert status(client, cid, B) == 200


def test_unattributed_blobs_are_public_by_cid(client: httpx.Client) -> None:
    """Pushed without ?did= (an operator's own file): no DID-scoped takedown can apply,
    so any DID may name it; a CID takedown still withholds it."""
    cid = push(client, os.urandom(64))
    assert status(client, cid, C) == 200 and status(client, cid) == 200
    admin(client, "takedown", cid=cid)
    assert status(client, cid, C) == 451
    admin(client, "restore", cid=cid)


def test_admin_shape_and_feed(client: httpx.Client) -> None:
    start = client.get("/admin/feed", headers=AUTH).json()["last"]
    cid = compute(os.urandom(8))
    down = admin(client, "takedown", cid=cid, reason="illegal")
    up = admin(client, "restore", cid=cid)
    assert set(down) == set(up) == {"action", "scope", "did", "cid", "reason", "changed", "seq"}
    assert (down["action"], up["action"], down["reason"]) == ("takedown", "restore", "illegal")
    feed = client.get("/admin/feed", params={"after": start}, headers=AUTH).json()
    assert [(e["seq"], e["action"], e["cid"]) for e in feed["events"]] == [
        (down["seq"], "takedown", cid), (up["seq"], "restore", cid)]
    assert feed["last"] == up["seq"]
    assert client.get("/admin/feed").status_code == 401
    assert client.get("/admin/feed", headers=ADMIN).status_code == 200
    assert client.post("/admin/takedown", json={"cid": cid}, headers=AUTH).status_code == 403
    for bad in ({}, {"cid": "nope"}, {"did": "did:nope"}, {"cid": cid, "restore": True}, [1]):
        r = client.post("/admin/takedown", json=bad, headers=ADMIN)
        assert r.status_code == 400 and r.json()["error"] == "InvalidRequest"


def _files(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*") if p.is_file()}


def test_handoffs_go_to_the_bounded_pulled_tier_under_quotas(client: httpx.Client,
                                                             origin: Origin) -> None:
    pinned_root = origin.data_dir / "blobs"
    pinned_before = _files(pinned_root)
    flooder = "did:plc:" + "f" * 24
    blobs = [os.urandom(100 * KB) for _ in range(4)]
    for data in blobs[:3]:
        r = handoff(client, data, flooder)
        assert r.status_code == 201 and r.json()["tier"] == "pulled", r.text
        assert status(client, compute(data), flooder) == 200  # served under its holder
        assert status(client, compute(data), A) == 404  # and under nobody else
    # Hole 1: the flood from one DID hits its quota, with a clear answer...
    refused = handoff(client, blobs[3], flooder)
    assert refused.status_code == 429 and refused.json()["error"] == "QuotaExceeded"
    assert int(refused.headers["retry-after"]) > 0
    assert status(client, compute(blobs[3]), flooder) == 404
    # ...and none of it reached the permanent store.
    assert _files(pinned_root) == pinned_before
    # Another account on the same PDS has its own quota, until the PDS's runs out.
    other = "did:plc:" + "g" * 24
    assert handoff(client, os.urandom(100 * KB), other).status_code == 201
    assert handoff(client, os.urandom(300 * KB), other).status_code == 429  # PDS: 700 KB
    # Bytes received count, stored or not: a body that fails verification is charged.
    liar = "did:plc:" + "h" * 24
    bad = client.put(f"/handoff/{compute(b'x')}", content=os.urandom(250 * KB),
                     headers=AUTH, params={"did": liar, "pds": "https://other.example"})
    assert bad.status_code == 422
    assert handoff(client, os.urandom(100 * KB), liar, "https://other.example").status_code == 429
    # The pulled tier stays within its budget: the least recently used went first.
    pulled = origin.data_dir / "pulled" / "blobs"
    assert sum(p.stat().st_size for p in pulled.rglob("*") if p.is_file()) <= PULLED_MAX
    assert status(client, compute(blobs[0]), flooder) == 404  # evicted; holder kept


def test_a_push_pins_a_pulled_blob_and_handoffs_record_holders(client: httpx.Client,
                                                               origin: Origin) -> None:
    data = os.urandom(10 * KB)
    puller = "did:plc:" + "p" * 24
    assert handoff(client, data, puller, "https://p.example").json()["tier"] == "pulled"
    cid = push(client, data, A)
    assert client.put(f"/blob/{cid}", content=data, headers=AUTH).json()["size"] == len(data)
    assert compute(data) in _files(origin.data_dir / "blobs")
    assert compute(data) not in _files(origin.data_dir / "pulled" / "blobs")
    # A hand-off of a blob already here only records the holder.
    again = handoff(client, data, B, "https://p.example")
    assert again.status_code == 200 and again.json()["tier"] == "pinned"
    assert status(client, cid, B) == 200 and status(client, cid, puller) == 200


def test_control_cli_takes_down_at_an_origin_without_aws(client: httpx.Client,
                                                         origin: Origin) -> None:
    cid = push(client, os.urandom(64), C)
    env = {**os.environ, "ATCDN_ORIGIN_ADMIN_TOKEN": ADMIN_TOKEN}
    for action, expected in (("takedown", 451), ("restore", 200)):
        done = subprocess.run(atcdn("control", action, "--origin", origin.url, "--did", C,
                                    "--cid", cid), env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert (answer["action"], answer["scope"], answer["changed"]) == (action, "did+cid", True)
        assert status(client, cid, C) == expected


def test_an_index_of_the_first_release_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    from atcdn.core.takedowns import Target
    from atcdn.origin.index import Index

    path = tmp_path / "index.sqlite"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE blobs (cid TEXT PRIMARY KEY, size INTEGER NOT NULL, mime TEXT NOT NULL,
                            first_seen REAL NOT NULL);
        CREATE TABLE refs (cid TEXT NOT NULL, did TEXT NOT NULL, first_seen REAL NOT NULL,
                           PRIMARY KEY (cid, did));
        CREATE TABLE takedowns (subject TEXT PRIMARY KEY, at REAL NOT NULL);
        INSERT INTO blobs VALUES ('bafkone', 3, 'text/plain', 1.0);
        INSERT INTO refs VALUES ('bafkone', 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa', 1.0);
        INSERT INTO takedowns VALUES ('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa', 2.0);
        INSERT INTO takedowns VALUES ('bafktwo', 2.0);
    """)
    old.commit()
    old.close()
    index = Index(path)
    try:
        assert index.get("bafkone").pinned  # type: ignore[union-attr]
        assert index.holders("bafkone") == {A: "push"}
        assert index.authorize("bafkone", A) == "taken-down"
        assert index.authorize("bafktwo", None) == "taken-down"
        assert index.restore(Target(did=A)) == (True, 1)
        assert index.authorize("bafkone", A) == "serve"
    finally:
        index.close()
