"""The ring that gives each CID a home origin (core/ring.py): pure, tested directly."""

from __future__ import annotations

from collections import Counter

import pytest
from atcdn.core.cid import compute
from atcdn.core.ring import Ring, up_first
from atcdn.core.settings import EdgeSettings

ORIGINS = ["http://10.0.0.1:8100", "http://10.0.0.2:8100", "http://10.0.0.3:8100"]
KEYS = [compute(str(i).encode()) for i in range(30_000)]


def test_every_edge_computes_the_same_order_whatever_order_it_was_given():
    a, b = Ring(ORIGINS), Ring(reversed(ORIGINS))
    for key in KEYS[:1000]:
        assert a.order(key) == b.order(key)
        assert sorted(a.order(key)) == sorted(ORIGINS)  # every origin, once
        assert a.home(key) == a.order(key)[0]


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_keys_spread_evenly(n: int):
    ring = Ring(f"http://origin{i}.example:8100" for i in range(n))
    share = Counter(ring.home(key) for key in KEYS)
    assert len(share) == n
    expected = len(KEYS) / n
    assert all(abs(count - expected) < 0.05 * expected for count in share.values()), share


def test_the_next_origin_is_spread_too():
    """A dead origin's keys go to every other origin, not all to one neighbour."""
    ring = Ring(f"http://origin{i}.example:8100" for i in range(4))
    dead = ring.nodes[0]
    heirs = Counter(ring.order(key)[1] for key in KEYS if ring.home(key) == dead)
    assert set(heirs) == set(ring.nodes[1:])
    assert min(heirs.values()) > 0.25 * sum(heirs.values())


def test_removing_an_origin_moves_only_its_share_and_adding_it_back_moves_it_home():
    full = Ring(ORIGINS)
    dead = ORIGINS[1]
    without = Ring(o for o in ORIGINS if o != dead)
    moved = 0
    for key in KEYS:
        before = full.order(key)
        if before[0] == dead:
            moved += 1
            assert without.home(key) == before[1]  # the next origin on its order
        else:
            assert without.home(key) == before[0]  # did not move
    assert abs(moved - len(KEYS) / 3) < 0.05 * len(KEYS) / 3
    assert all(Ring(ORIGINS).home(key) == full.home(key) for key in KEYS)


def test_a_key_whose_home_is_down_goes_to_the_next_origin_that_is_up():
    order = ["a", "b", "c"]
    assert up_first(order, set()) == ["a", "b", "c"]
    assert up_first(order, {"a"}) == ["b", "c", "a"]
    assert up_first(order, {"a", "b"}) == ["c", "a", "b"]
    assert up_first(order, {"a", "b", "c"}) == order  # all down: the home first anyway


def test_one_origin_and_duplicates():
    assert Ring(["http://a"]).order("x") == ["http://a"]
    assert Ring(["http://a", "http://a", "http://b"]).nodes == ("http://a", "http://b")
    with pytest.raises(ValueError):
        Ring([])


def test_edge_settings_take_several_origins():
    settings = EdgeSettings(origin="http://10.0.0.1:8100/, http://10.0.0.2:8100")
    assert settings.origins == ["http://10.0.0.1:8100", "http://10.0.0.2:8100"]
    assert EdgeSettings(origin="http://10.0.0.1:8100").origins == ["http://10.0.0.1:8100"]
    with pytest.raises(ValueError, match="http://10.0.0.2:8100"):
        EdgeSettings(origin="http://10.0.0.1:8100,10.0.0.2:8100")
    with pytest.raises(ValueError, match="empty"):
        EdgeSettings(origin="http://10.0.0.1:8100,,")
