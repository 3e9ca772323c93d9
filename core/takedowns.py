"""What a takedown names, and the JSON the origin's and the edge's admin routes share.

A takedown (or restore) has one of three scopes (docs/authorization.md):

- ``cid``: the bytes, under every DID (an operator: illegal everywhere);
- ``did``: an account, every blob under it;
- ``did+cid``: one blob of one repo (a record label, a PDS blob takedown).

Both nodes take ``POST /admin/takedown`` and ``POST /admin/restore`` with the body
``{"did"?, "cid"?, "reason"?}`` and answer ``Target.answer(...)``. Pure code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from atcdn.core import cid as cids
from atcdn.core import did as dids

Scope = Literal["cid", "did", "did+cid"]
MAX_REASON = 500


@dataclass(frozen=True)
class Target:
    """What a takedown or restore applies to: a DID, a CID, or both (one repo's blob)."""

    did: str | None = None
    cid: str | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.did is None and self.cid is None:
            raise ValueError("give a \"did\", a \"cid\" or both")

    @property
    def scope(self) -> Scope:
        if self.did and self.cid:
            return "did+cid"
        return "did" if self.did else "cid"

    @classmethod
    def from_json(cls, body: Any) -> Target:
        """Validate an admin body; ValueError (with a message for the client) if wrong."""
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object: {\"did\"?, \"cid\"?, \"reason\"?}")
        unknown = body.keys() - {"did", "cid", "reason"}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}; use /admin/restore to restore")
        did, cid, reason = body.get("did"), body.get("cid"), body.get("reason", "")
        for name, value in (("did", did), ("cid", cid), ("reason", reason)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"\"{name}\" must be a string")
        if did is not None:
            did = dids.parse(did)  # DIDError is a ValueError
        if cid is not None:
            cids.parse(cid)  # CIDError is a ValueError
        return cls(did=did, cid=cid, reason=(reason or "")[:MAX_REASON])

    def answer(self, action: str, *, changed: bool, **extra: Any) -> dict[str, Any]:
        """The admin routes' answer: what was recorded, its scope, and node-specific
        extras (the origin's feed ``seq``, the edge's ``purged`` count)."""
        return {"action": action, "scope": self.scope, "did": self.did, "cid": self.cid,
                "reason": self.reason, "changed": changed, **extra}
