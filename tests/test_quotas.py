"""The arithmetic of strangers' shares (core/quotas.py), directly: no I/O."""

from __future__ import annotations

from atcdn.core.quotas import over_budget, over_shares


def test_over_budget_drops_the_oldest_until_the_total_fits() -> None:
    assert over_budget([("a", 5), ("b", 5), ("c", 5)], 15, 6) == ["a", "b"]
    assert over_budget([("a", 5)], 5, 5) == []


def test_a_subject_past_its_share_loses_only_its_own_oldest() -> None:
    entries = [("op1", 10, ()), ("s1", 10, ("did:s", "pds:x")), ("op2", 10, ()),
               ("s2", 10, ("did:s", "pds:x")), ("s3", 10, ("did:s", "pds:x"))]
    held = {"did:s": 30, "pds:x": 30}
    assert over_shares(entries, held, {"did:s": 15, "pds:x": 100}) == ["s1", "s2"]
    # What may not be dropped (a transcode in progress) still counts in what it holds.
    assert over_shares(entries, {"did:s": 40, "pds:x": 40}, {"did:s": 15}) == ["s1", "s2", "s3"]
    assert over_shares(entries, held, {"did:s": 30, "pds:x": 30}) == []


def test_a_pds_share_binds_over_its_accounts_and_counts_what_they_lost() -> None:
    entries = [("a1", 10, ("did:a", "pds:x")), ("b1", 10, ("did:b", "pds:x")),
               ("a2", 10, ("did:a", "pds:x")), ("b2", 10, ("did:b", "pds:x")),
               ("c1", 10, ("did:c", "pds:y"))]
    held = {"did:a": 20, "did:b": 20, "did:c": 10, "pds:x": 40, "pds:y": 10}
    shares = {"did:a": 10, "did:b": 20, "did:c": 10, "pds:x": 20, "pds:y": 10}
    # did:a drops a1 (its own); pds:x then holds 30 and drops its oldest left, b1.
    assert over_shares(entries, held, shares) == ["a1", "b1"]
