"""Several origins over one SeaweedFS cluster behave as one (docs/fleet-store.md).

Real processes: a SeaweedFS cluster (one master, three volume servers holding every blob
twice, a filer, the S3 gateway), moto_server carrying the takedown feed, and two origins
over one bucket. A blob pushed through one is served by the other under the same
holders; a takedown through one is answered 451 by the other within the feed's bound; a
volume server killed with SIGKILL loses nothing; an origin's SQLite index is a cache it
rebuilds from the store and the feed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from atcdn.core.cid import compute

from tests.helpers.env import ADMIN_TOKEN, TOKEN
from tests.helpers.labeler import jpeg, takedown_feed
from tests.helpers.nodes import Origin, running_origins

ALICE = "did:plc:" + "a" * 24
BOB = "did:plc:" + "b" * 24
CAROL = "did:plc:" + "c" * 24
DAVE = "did:plc:" + "d" * 24  # never taken down, never a holder
BOUND = 5.0  # seconds a takedown may take to reach the other origin (feed polled every 0.5 s)
WRITE = {"authorization": f"Bearer {TOKEN}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def origins(seaweed_cluster, moto: dict[str, str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Origin, Origin]]:
    tmp = tmp_path_factory.mktemp("fleet-store")
    env = {**seaweed_cluster.origin_env(f"atcdn-{uuid.uuid4().hex[:12]}"),
           **takedown_feed(moto)}
    with running_origins(tmp, 2, env) as (a, b):
        yield a, b


def picture(n: int) -> bytes:
    """A small JPEG, different for every ``n`` (its width says which)."""
    return jpeg(n, (64 + n, 48))


def push(origin: Origin, data: bytes, did: str | None = None) -> str:
    cid = compute(data)
    answer = httpx.put(f"{origin.url}/blob/{cid}", content=data, headers=WRITE,
                       params={"did": did} if did else None, timeout=30)
    assert answer.status_code in (200, 201), answer.text
    return cid


def get(origin: Origin, cid: str, did: str | None = None) -> httpx.Response:
    return httpx.get(f"{origin.url}/blob/{cid}", params={"did": did} if did else None,
                     timeout=30)


def admin(origin: Origin, action: str, **target: str) -> dict:
    answer = httpx.post(f"{origin.url}/admin/{action}", json=target, headers=ADMIN, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def within(seconds: float, check: Callable[[], bool]) -> float:
    """Seconds until ``check()`` holds; fails after ``seconds``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"not within {seconds}s"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_push_through_one_origin_is_served_by_the_other(origins) -> None:
    a, b = origins
    data = picture(1)
    cid = push(a, data, ALICE)
    served = get(b, cid, ALICE)
    assert served.status_code == 200 and served.content == data
    assert get(b, cid).status_code == 200  # by CID alone: a live holder
    assert get(b, cid, BOB).status_code == 404  # B knows the holders A recorded
    assert get(a, cid, BOB).status_code == 404
    push(b, data, BOB)  # now BOB holds it too, recorded through B
    within(10.0, lambda: get(a, cid, BOB).status_code == 200)  # A learns it
    assert get(a, cid, CAROL).status_code == 404


def test_a_takedown_through_one_origin_is_451_at_the_other(origins) -> None:
    a, b = origins
    blob = push(a, picture(2), ALICE)
    assert get(b, blob, ALICE).status_code == 200  # B served it before
    admin(a, "takedown", cid=blob, reason="illegal")
    took = within(BOUND, lambda: get(b, blob, ALICE).status_code == 451)
    assert get(b, blob).status_code == 451
    admin(b, "restore", cid=blob)
    within(BOUND, lambda: get(a, blob, ALICE).status_code == 200)

    # An account taken down through B: A withholds every blob only it holds.
    account = push(a, picture(3), CAROL)
    admin(b, "takedown", did=CAROL)
    within(BOUND, lambda: get(a, account).status_code == 451)
    assert get(a, account, CAROL).status_code == 451

    # One repo's blob, taken down through A, for a blob B has never seen: B reads its
    # holders from the store and finds the only one taken down.
    unseen = compute(data := picture(4))
    httpx.put(f"{a.url}/blob/{unseen}", content=data, headers=WRITE,
              params={"did": BOB}, timeout=30).raise_for_status()
    admin(a, "takedown", did=BOB, cid=unseen)
    within(BOUND, lambda: get(b, unseen).status_code == 451)
    assert get(b, unseen, BOB).status_code == 451
    assert took < BOUND


def test_an_origin_rebuilds_its_index_from_the_store_and_the_feed(origins) -> None:
    a, b = origins
    kept = push(b, picture(5), ALICE)
    gone = push(b, picture(6), ALICE)
    admin(b, "takedown", cid=gone)
    within(BOUND, lambda: get(a, gone).status_code == 451)
    a.stop()
    for path in a.data_dir.glob("index.sqlite*"):
        path.unlink()
    a.start()  # ready only once it has replayed the feed
    assert get(a, gone, ALICE).status_code == 451
    assert get(a, kept, ALICE).status_code == 200
    assert get(a, kept, BOB).status_code == 404


def test_a_volume_server_killed_loses_no_blob(origins, seaweed_cluster) -> None:
    a, b = origins
    blobs = {push(a, data, ALICE): data for data in (picture(10 + n) for n in range(20))}
    seaweed_cluster.volumes[0].kill()
    try:
        for cid, data in blobs.items():
            for origin in (a, b):
                answer = get(origin, cid, ALICE)
                assert answer.status_code == 200 and answer.content == data
        failed = 0
        for n in range(10):  # writes: at most one failure, then success on retry
            data = picture(40 + n)
            cid = compute(data)
            for _attempt in range(2):
                answer = httpx.put(f"{b.url}/blob/{cid}", content=data, headers=WRITE,
                                   params={"did": ALICE}, timeout=60)
                if answer.status_code in (200, 201):
                    break
                failed += 1
            assert answer.status_code in (200, 201), answer.text
            blobs[cid] = data
        assert failed <= 1
    finally:
        seaweed_cluster.volumes[0].start()
    seaweed_cluster.wait_volume_servers(3)
    # Healed: with the first back, another may die and still every blob is there,
    # those written while the first was down included.
    seaweed_cluster.volumes[1].kill()
    try:
        for cid, data in blobs.items():
            answer = get(a, cid, ALICE)
            assert answer.status_code == 200 and answer.content == data
        push(a, picture(60), ALICE)
    finally:
        seaweed_cluster.volumes[1].start()
    seaweed_cluster.wait_volume_servers(3)


def test_the_cluster_is_separate_processes(seaweed_cluster, tmp_path: Path) -> None:
    """Each part runs alone, in its own directory (what a fleet deploys)."""
    parts = seaweed_cluster.parts()
    assert len(parts) == 6 and len({p.proc.pid for p in parts}) == 6
    assert len({p.workdir for p in parts}) == 6


def test_markers_that_are_not_holders_are_ignored(origins, seaweed_cluster) -> None:
    """The bucket is shared, so its keys are read as data: a key under a blob's holders
    that is not ``<did>/<via>`` with a valid DID and a known via names no holder."""
    import boto3

    a, b = origins
    cid = push(a, picture(70), ALICE)
    s3 = boto3.client("s3", endpoint_url=seaweed_cluster.endpoint, region_name="us-east-1",
                      aws_access_key_id=seaweed_cluster.access_key,
                      aws_secret_access_key=seaweed_cluster.secret_key)
    bucket = a.env["ATCDN_ORIGIN_S3_BUCKET"]
    for junk in (f"{BOB}/owner", "did:plc:short/push", f"{DAVE}", f"{DAVE}/push/extra"):
        s3.put_object(Bucket=bucket, Key=f"holders/{cid}/{junk}", Body=b"")
    assert get(b, cid, ALICE).status_code == 200
    for did in (BOB, DAVE):
        assert get(b, cid, did).status_code == 404


def test_settled_decisions_need_no_shared_read(tmp_path: Path) -> None:
    """``Index.settled``: only answers that rest on holders unknown here are re-read."""
    from atcdn.core.takedowns import Target
    from atcdn.origin.index import Index

    index = Index(tmp_path / "index.sqlite")
    try:
        index.record("bafkheld", 10, "image/png", ALICE)
        index.record("bafknone", 10, "image/png")
        assert index.settled("bafkheld", ALICE)  # a holder backs it
        assert not index.settled("bafkheld", BOB)  # not held: maybe held elsewhere
        assert not index.settled("bafknone", ALICE)  # no holder known
        assert index.settled("bafkheld", None)  # a live holder
        assert not index.settled("bafknone", None)
        index.take_down(Target(did=ALICE))
        assert not index.settled("bafkheld", None)  # every known holder down
        assert index.settled("bafkheld", ALICE)  # the account's takedown decides
        index.take_down(Target(cid="bafknone"))
        assert index.settled("bafknone", BOB)  # a CID takedown decides
        index.learn("bafkheld", {BOB: "pds"})
        assert index.settled("bafkheld", None) and index.get("bafkheld").synced > 0
    finally:
        index.close()
