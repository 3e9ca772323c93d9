"""The takedown feed and the follower every origin and edge runs, over two transports.

- ``Feed``: the fleet's feed in DynamoDB (boto3 is loaded only when it is configured,
  ``atcdn.core.aws``).
- ``OriginFeed``: the feed an origin serves itself (``GET /admin/feed?after=<seq>``), so a
  deployment without AWS still propagates takedowns from its origin to its edges.

Both yield the same ``Event`` shape, in ``seq`` order, and ``Follower`` follows either.

The feed is one DynamoDB table holding an ordered log: partition key ``feed`` (always
``"takedowns"``), sort key ``seq`` (1, 2, 3, ...). Publishing appends the next ``seq`` with
a conditional put, so concurrent publishers can never share a number and the log has no
gaps; following is a strongly consistent ``Query`` for ``seq > position``. Each follower
keeps its own position in a small file, so a restart resumes where it stopped and a new
node replays the whole log to learn every takedown still in force.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
from atcdn.core import cid as cids
from atcdn.core import did as dids
from atcdn.core.aws import client
from atcdn.core.files import write_atomic
from atcdn.core.settings import ControlSettings
from filelock import FileLock

log = logging.getLogger("atcdn.takedowns")

FEED = "takedowns"
Action = Literal["takedown", "restore"]


@dataclass(frozen=True)
class Event:
    """One entry of the feed: a takedown or restore of a blob (``cid``), an account
    (``did``), or one repo's blob (both)."""

    seq: int
    action: Action
    cid: str | None = None
    did: str | None = None
    at: str = ""
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}

    @classmethod
    def from_dict(cls, item: dict[str, Any]) -> Event:
        return cls(seq=int(item["seq"]), action=item["action"], cid=item.get("cid"),
                   did=item.get("did"), at=item.get("at", ""), reason=item.get("reason", ""))


class Source(Protocol):
    """A feed transport: every event after ``after``, oldest first."""

    def events(self, after: int = 0) -> Iterator[Event]: ...


def check_target(cid: str | None, did: str | None) -> None:
    """Raise ValueError unless a valid ``cid``, ``did``, or both (one repo's blob) is named."""
    if cid is None and did is None:
        raise ValueError("name a cid, a did, or both")
    if cid is not None:
        cids.parse(cid)  # CIDError is a ValueError
    if did is not None:
        dids.parse(did)  # DIDError is a ValueError


class Feed:
    """The DynamoDB log of takedown events."""

    def __init__(self, settings: ControlSettings) -> None:
        self.table = settings.takedown_table
        self.dynamodb = client("dynamodb", settings)

    def ensure_table(self) -> None:
        """Create the table (on-demand billing) unless it exists; wait until it is active."""
        try:
            self.dynamodb.create_table(
                TableName=self.table,
                KeySchema=[{"AttributeName": "feed", "KeyType": "HASH"},
                           {"AttributeName": "seq", "KeyType": "RANGE"}],
                AttributeDefinitions=[{"AttributeName": "feed", "AttributeType": "S"},
                                      {"AttributeName": "seq", "AttributeType": "N"}],
                BillingMode="PAY_PER_REQUEST")
        except self.dynamodb.exceptions.ResourceInUseException:
            pass
        self.dynamodb.get_waiter("table_exists").wait(TableName=self.table)

    def last_seq(self) -> int:
        answer = self.dynamodb.query(
            TableName=self.table, KeyConditionExpression="feed = :f",
            ExpressionAttributeValues={":f": {"S": FEED}},
            ScanIndexForward=False, Limit=1, ConsistentRead=True)
        items = answer.get("Items", [])
        return int(items[0]["seq"]["N"]) if items else 0

    def publish(self, action: Action, *, cid: str | None = None, did: str | None = None,
                reason: str = "") -> Event:
        """Append an event with the next sequence number (retrying if another publisher won)."""
        if action not in ("takedown", "restore"):
            raise ValueError(f"unknown action {action!r}")
        check_target(cid, did)
        while True:
            event = Event(seq=self.last_seq() + 1, action=action, cid=cid, did=did,
                          at=datetime.now(UTC).isoformat(timespec="seconds"), reason=reason)
            item = {"feed": {"S": FEED}, "seq": {"N": str(event.seq)},
                    "action": {"S": action}, "at": {"S": event.at}}
            if cid:
                item["cid"] = {"S": cid}
            if did:
                item["did"] = {"S": did}
            if reason:
                item["reason"] = {"S": reason}
            try:
                self.dynamodb.put_item(TableName=self.table, Item=item,
                                       ConditionExpression="attribute_not_exists(seq)")
                return event
            except self.dynamodb.exceptions.ConditionalCheckFailedException:
                pass  # another publisher took this seq: try the next

    def events(self, after: int = 0) -> Iterator[Event]:
        """Every event with ``seq > after``, oldest first."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "feed = :f AND seq > :after",
            "ExpressionAttributeValues": {":f": {"S": FEED}, ":after": {"N": str(after)}},
            "ConsistentRead": True,
        }
        while True:
            page = self.dynamodb.query(**kwargs)
            for item in page.get("Items", []):
                yield Event(seq=int(item["seq"]["N"]), action=item["action"]["S"],
                            cid=item.get("cid", {}).get("S"), did=item.get("did", {}).get("S"),
                            at=item.get("at", {}).get("S", ""),
                            reason=item.get("reason", {}).get("S", ""))
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class OriginFeed:
    """The takedown feed an origin serves (``GET /admin/feed``), read with its token."""

    PAGE = 1000

    def __init__(self, origin_url: str, token: str | None, timeout: float = 10.0) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=origin_url.rstrip("/"), headers=headers,
                                   timeout=timeout, trust_env=False)

    def _page(self, after: int) -> tuple[list[Event], int]:
        response = self.client.get("/admin/feed", params={"after": after, "limit": self.PAGE})
        response.raise_for_status()
        body = response.json()
        return [Event.from_dict(item) for item in body["events"]], int(body["last"])

    def events(self, after: int = 0) -> Iterator[Event]:
        events, last = self._page(after)
        if last < after:
            # The origin's feed is shorter than our position: a new origin database.
            # Replay it all (applying is idempotent) rather than miss its takedowns.
            log.warning("origin feed ends at %s, before our position %s: replaying", last, after)
            events, last = self._page(0)
        while events:
            yield from events
            if len(events) < self.PAGE:
                return
            events, last = self._page(events[-1].seq)

    def close(self) -> None:
        self.client.close()


class Follower:
    """Polls a feed (either transport) every ``interval`` seconds and hands each new
    event to ``apply``.

    ``apply(event)`` must be idempotent (an event may be applied again after a crash
    between applying and saving the position). The position is saved after every event;
    if ``apply`` raises, the position stays put and the event is retried at the next poll.
    """

    def __init__(self, feed: Source, apply: Callable[[Event], None], *,
                 state_file: Path | None, interval: float) -> None:
        self.feed = feed
        self.apply = apply
        self.state_file = state_file
        self.interval = interval
        self.position = self._load()
        self.synced = time.time()  # when a poll last reached the end of the feed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _load(self) -> int:
        if self.state_file and self.state_file.exists():
            text = self.state_file.read_text().strip()
            return int(text) if text else 0
        return 0

    def _save(self) -> None:
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.state_file, f"{self.position}\n")

    def poll(self) -> int:
        """Apply every event after the saved position; returns how many were applied.

        With a state file, polls are serialised by a lock next to it and start from the
        position on disk, so the worker processes of one server share one position and
        never apply an older event after a newer one.
        """
        if self.state_file is None:
            return self._poll()
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.state_file) + ".lock"):
            self.position = self._load()
            return self._poll()

    def _poll(self) -> int:
        applied = 0
        for event in self.feed.events(after=self.position):
            self.apply(event)
            self.position = event.seq
            self._save()
            applied += 1
        return applied

    def run(self) -> None:
        """Poll until ``stop()``; errors are logged and retried at the next tick. After
        each tick, ``atcdn_takedown_feed_lag_seconds`` says how long ago a poll last
        reached the end of the feed (about one interval when all is well); a process
        following several feeds (an edge with several origins) shows the furthest behind."""
        lag = _lag_gauge()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.poll()
                self.synced = time.time()
            except httpx.HTTPError as exc:  # an origin down: no traceback every tick
                log.warning("takedown feed poll failed (%r); retrying in %ss", exc,
                            self.interval)
            except Exception:
                log.exception("takedown feed poll failed; retrying in %ss", self.interval)
            lag.set(time.time() - min(f.synced for f in (tuple(_RUNNING) or (self,))))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self) -> None:
        """Run in a daemon thread (for an app's startup)."""
        _RUNNING.add(self)
        self._thread = threading.Thread(target=self.run, name="takedown-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        _RUNNING.discard(self)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)


_LAG = None
_RUNNING: set[Follower] = set()  # started in this process (their worst lag is shown)


def _lag_gauge():
    """The feed-lag gauge, made once per process (in the multiprocess files when the
    server keeps metrics there; the worst worker of a node is what counts)."""
    global _LAG
    if _LAG is None:
        from prometheus_client import Gauge

        _LAG = Gauge("atcdn_takedown_feed_lag_seconds",
                     "seconds since this node's takedown follower last reached the feed's end",
                     registry=None, multiprocess_mode="livemax")
    return _LAG


def start_follower(apply: Callable[[Event], None], settings: ControlSettings,
                   default_state_file: Path) -> Follower | None:
    """Start following the feed if ``settings.takedown_follow`` is on (the apps' startup
    hook; the app factory passes the settings in).

    The position lives in ``settings.takedown_state_file``, else in ``default_state_file``
    (inside the server's data or cache directory). Returns the running follower (call
    ``stop()`` at shutdown), or None when following is off.
    """
    if not settings.takedown_follow:
        return None
    follower = Follower(Feed(settings), apply,
                        state_file=settings.takedown_state_file or default_state_file,
                        interval=settings.takedown_poll_interval)
    follower.start()
    log.info("following takedown feed %s every %ss", settings.takedown_table,
             settings.takedown_poll_interval)
    return follower


def start_origin_follower(apply: Callable[[Event], None], settings: ControlSettings,
                          state_file: Path, origin_url: str, token: str | None) -> Follower:
    """Follow the feed an origin serves (the edge's default transport)."""
    follower = Follower(OriginFeed(origin_url, token), apply, state_file=state_file,
                        interval=settings.takedown_poll_interval)
    follower.start()
    log.info("following the origin's takedown feed at %s every %ss", origin_url,
             settings.takedown_poll_interval)
    return follower
