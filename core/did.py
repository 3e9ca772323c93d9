"""AT Protocol DIDs: ``did:plc:`` + 24 base32 characters, or ``did:web:<hostname>``
(pure code). Every component that takes a DID from outside validates it here."""

from __future__ import annotations

import re
from urllib.parse import unquote

PLC_RE = re.compile(r"did:plc:[a-z2-7]{24}")
# did:web names a host (atproto allows no path); a port only percent-encoded (%3A).
WEB_RE = re.compile(
    r"did:web:(?P<host>(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)"
    r"(?:%3a(?P<port>[0-9]{1,5}))?"
)


class DIDError(ValueError):
    """Not a did:plc or did:web DID; the message says why."""


def parse(text: str) -> str:
    """The canonical DID in ``text`` (raw or percent-encoded, as the reference URL
    builder writes it in paths), or raise ``DIDError``."""
    if text[:6].lower() == "did%3a":  # still encoded after a server's decoding
        text = unquote(text)
    if text.startswith("did:plc:"):
        if PLC_RE.fullmatch(text):
            return text
        raise DIDError("did:plc DIDs are 'did:plc:' followed by 24 base32 characters")
    if text.startswith("did:web:"):
        # A decoded "did:web:host:8080" means "host%3A8080": put the escape back.
        rest = text[len("did:web:"):]
        if rest.count(":") == 1:
            rest = rest.replace(":", "%3A")
        did = "did:web:" + rest.lower().replace("%3a", "%3A")
        if WEB_RE.fullmatch(did.lower()):
            return did
        raise DIDError("did:web DIDs are 'did:web:' followed by a hostname")
    raise DIDError("unsupported DID method (did:plc and did:web only)")


def web_host(did: str) -> str:
    """``host`` or ``host:port`` named by a did:web."""
    return did[len("did:web:"):].replace("%3A", ":")
