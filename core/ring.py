"""Which origin is a CID's home: rendezvous (highest random weight) hashing. Pure: no I/O.

Every node given the same set of origin names computes the same order of origins for a
key, whatever order the set was written in, so each CID has one home origin across the
whole fleet (DESIGN.md §8, the shield) and the next origin in its order is where it goes
while the home is down. Removing an origin moves only the keys it was home to (every other
key keeps its order among the rest); adding it back moves exactly those keys home again.

Rendezvous hashing rather than a ring of virtual nodes: a fleet has a handful of origins,
a lookup is one hash per origin, the spread is even in expectation with nothing to tune,
and the whole failover order of a key comes from one sort.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


def score(node: str, key: str) -> int:
    """The weight of ``node`` for ``key``: a 64-bit hash of both."""
    digest = hashlib.blake2b(f"{node}\n{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Ring:
    """A fixed set of nodes (duplicates dropped) and the order of them for any key."""

    def __init__(self, nodes: Iterable[str]) -> None:
        self.nodes = tuple(dict.fromkeys(nodes))
        if not self.nodes:
            raise ValueError("a ring needs at least one node")

    def order(self, key: str) -> list[str]:
        """Every node for ``key``, its home first, then where it goes if that is gone."""
        if len(self.nodes) == 1:
            return list(self.nodes)
        return sorted(self.nodes, key=lambda node: (score(node, key), node), reverse=True)

    def home(self, key: str) -> str:
        return self.order(key)[0]


def up_first(order: Sequence[T], down: Collection[T]) -> list[T]:
    """``order`` with the nodes that are up first, each part in ring order: a key whose
    home is down goes to the next node that is up; when every node is down, the order
    is unchanged (try the home anyway: a health check may be stale)."""
    return [n for n in order if n not in down] + [n for n in order if n in down]
