"""A herd of identical misses is one miss: the per-worker bound on misses in progress
(ATCDN_EDGE_MAX_PENDING_MISSES) must not refuse requests that only wait on a running one."""

from __future__ import annotations

import asyncio

from tests.helpers.nodes import Upstream
from tests.helpers.pictures import DID, herd, photo


def test_herd_larger_than_the_miss_bound_is_served(upstream: Upstream, edge_factory) -> None:
    cid = upstream.add_blob(photo(seed=11))
    edge = edge_factory(upstream.url, workers=1, env={"ATCDN_EDGE_MAX_PENDING_MISSES": "2"})
    responses = asyncio.run(herd(f"{edge.url}/img/feed_fullsize/plain/{DID}/{cid}@jpeg", 40))
    assert [r.status_code for r in responses] == [200] * 40
    assert len({r.content for r in responses}) == 1
    assert edge.metric("atcdn_edge_origin_fetches_total") == 1
    assert edge.metric("atcdn_edge_transforms_total") == 1
