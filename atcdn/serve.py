"""Run an ASGI app factory under granian (default) or uvicorn."""

from __future__ import annotations

from atcdn.settings import Server


def run(target: str, *, host: str, port: int, workers: int, server: Server) -> None:
    """Serve ``target`` ("module:factory"); blocks until the server stops.

    Settings travel to the worker processes through ``ATCDN_*`` environment variables,
    so the factory builds its app from the environment in every worker.
    """
    if server == "granian":
        from granian import Granian
        from granian.constants import Interfaces

        Granian(
            target,
            address=host,
            port=port,
            interface=Interfaces.ASGI,
            workers=workers,
            factory=True,
            backlog=4096,
            log_access=False,
        ).serve()
    else:
        import uvicorn

        uvicorn.run(
            target, host=host, port=port, workers=workers, factory=True,
            log_level="warning", backlog=4096,
        )
