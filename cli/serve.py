"""Run an ASGI app factory under uvicorn (the default) or granian."""

from __future__ import annotations

import errno
import socket

from atcdn.core.settings import Server


def run(target: str, *, host: str, port: int, workers: int, server: Server) -> None:
    """Serve ``target`` ("module:factory"); blocks until the server stops.

    Settings travel to the worker processes through ``ATCDN_*`` environment variables,
    so the factory builds its app from the environment in every worker.
    """
    check_port(host, port)
    if server == "granian":
        from granian import Granian
        from granian.constants import Interfaces, Loops

        Granian(
            target,
            address=host,
            port=port,
            interface=Interfaces.ASGI,
            workers=workers,
            factory=True,
            backlog=4096,
            log_access=False,
            # A worker that dies (OOM kill, kill -9) is replaced; without this granian
            # stops accepting on every worker (tests/test_faults.py).
            respawn_failed_workers=True,
            # Not "auto", which takes uvloop when installed (uvicorn[standard] brings
            # it): granian hands requests to the loop from its own threads, and that
            # measured 0.88-0.90x of asyncio's req/s on 50 KB hits (bench/edge.py).
            loop=Loops.asyncio,
        ).serve()
    else:
        import uvicorn
        from uvicorn.supervisors import Multiprocess

        # access_log=False: uvicorn's own access logger would format a client address
        # and a path on every request only to drop them below "warning"; the app's
        # access log (core/accesslog.py) writes the lines. server_header=False: no
        # "server: uvicorn" on every answer (it names the software to strangers, and
        # uvicorn checks each header in Python: ~1 µs a hit, bench/hitcost.py).
        config = uvicorn.Config(target, host=host, port=port, workers=workers, factory=True,
                                log_level="warning", access_log=False, server_header=False,
                                backlog=4096)
        if workers > 1:
            Multiprocess(config, sockets=[_tcp_listener(host, port)]).run()
        else:
            uvicorn.Server(config).run()


def _tcp_listener(host: str, port: int) -> socket.socket:
    """The shared listening socket for uvicorn's workers, created with an explicit
    IPPROTO_TCP: uvicorn's own leaves ``proto`` at 0, so asyncio never sets TCP_NODELAY
    on accepted connections and every keep-alive response waits ~40 ms for a delayed
    ACK (Kludex/uvicorn#3149). 50 KB hits on 8 connections: 176 -> 2,200 req/s."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class PortInUse(SystemExit):
    """The port is held by another process: one line for the operator, no traceback."""


def check_port(host: str, port: int) -> None:
    """Refuse to start when something already listens on ``host:port``.

    A test bind with SO_REUSEADDR only, as our own listener does: it succeeds over
    TIME_WAIT leftovers of a stopped server, and fails while any socket listens there,
    including one opened with SO_REUSEPORT (granian's), which a second server that also
    set SO_REUSEPORT would silently share: requests then alternate between the two.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"atcdn: port {port} on {host} is already in use by another "
                                f"process; stop it or choose another port") from None
            raise PortInUse(f"atcdn: cannot listen on {host}:{port}: {exc.strerror}") from None
