"""``LabelActions``, the part the firehose follower calls: a label on a record that is not
indexed yet waits; ``on_record(uri)`` applies it the moment the record is indexed; a
record update adds its new blobs; an expired label is lifted by ``sweep()``. Against a
real origin process; the label state is written as the label follower writes it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from atcdn.core.settings import IngestSettings
from atcdn.ingest.label_actions import LabelActions
from atcdn.ingest.label_frames import parse_label
from atcdn.ingest.label_state import LabelState
from atcdn.ingest.origin_api import OriginClient
from atcdn.ingest.records import RecordIndex

from tests.helpers.env import ADMIN_TOKEN, TOKEN
from tests.helpers.ingest import origin_status
from tests.helpers.labeler import Signer, jpeg, now_iso, push
from tests.helpers.nodes import running_origin

LABELER = "did:plc:labelerlabelerlabelerlab"
ALICE = "did:plc:aliceaaaaaaaaaaaaaaaaaaa"
POST = f"at://{ALICE}/app.bsky.feed.post/3kaaa"


def test_on_record_applies_a_waiting_label_and_sweep_lifts_expired_ones(tmp_path: Path) -> None:
    with running_origin(tmp_path) as origin:
        one, two = push(origin.url, ALICE, jpeg(1)), push(origin.url, ALICE, jpeg(2))

        async def scenario() -> None:
            settings = IngestSettings(data_dir=tmp_path / "ingest", origin=origin.url)
            state, index = LabelState(settings.data_dir), RecordIndex(settings.data_dir)
            client = OriginClient(origin.url, TOKEN, ADMIN_TOKEN)
            actions = LabelActions(settings, state, index, client)
            label = parse_label(Signer().label(LABELER, POST, exp=now_iso(2.0)))
            state.note(label)
            await actions.reconcile(POST)
            assert state.pending(_now()) == [POST]
            assert origin_status(origin.url, one, ALICE) == 200

            index.put(POST, ALICE, [one])  # the firehose follower indexes the record...
            await actions.on_record(POST)  # ...and tells the labels
            assert origin_status(origin.url, one, ALICE) == 451
            assert state.pending(_now()) == []

            index.put(POST, ALICE, [one, two])  # an update adds a blob
            await actions.on_record(POST)
            assert origin_status(origin.url, two, ALICE) == 451

            await asyncio.sleep(2.5)  # the label expires: treated as negated
            await actions.sweep()
            assert origin_status(origin.url, one, ALICE) == 200
            assert origin_status(origin.url, two, ALICE) == 200
            assert state.applied(POST) is None
            await client.close()
            state.close()
            index.close()

        asyncio.run(scenario())


def _now() -> datetime:
    return datetime.now(UTC)
