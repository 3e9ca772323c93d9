"""A do-nothing ASGI app that drains a request body: the server's own receive ceiling.

bench/origin.py PUTs the same 50 MB to it under the same server, so the origin's PUT can
be read against what the server alone delivers to Python.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send


async def sink(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def create_app():
    return sink
