"""The transform interface the edge server calls, and the worker pool behind it.

Decoders are the riskiest code an edge runs on untrusted bytes, so the pipeline
(edge/image.py) never runs in the server process: it runs in a pool of worker processes
(pebble), each under an address-space limit (RLIMIT_AS), each task under a timeout. A
decoder that segfaults or runs away costs one request (503) and one worker, which the pool
replaces; a MemoryError is the source's fault (422). Workers are long-lived and forked
from a clean fork server, so a request costs no process start, and only the source bytes
and the rendition cross the process boundary. The fork server is started with no secrets
in its environment (``core/environment.py``), so no worker holds a token either; each
worker leaves the network and, under root, becomes the decoder user (``core/sandbox.py``).

Sources waiting for a worker are held in the server process, so their bytes are
bounded (``queue_bytes``; 503 Busy with Retry-After beyond, never remembered).

A failed transform (refused, undecodable, crashed, timed out) is remembered per rendition
key for ``FAILURE_MEMORY`` seconds (bounded, per server process), so a source that takes
the whole timeout cannot be asked for again and again.

The edge's app factory builds one ``Transformer.from_settings(settings)`` per server
process (its workers start with the first transform) and closes it on shutdown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import forkserver
from typing import Any, TypeVar

from atcdn.core.environment import without_secrets
from atcdn.core.limits import ImageLimits, MiB, WorkerLimits, confine
from atcdn.core.sandbox import isolate
from atcdn.core.settings import EdgeSettings
from atcdn.edge.image import MediaError, render
from atcdn.edge.presets import CONTENT_TYPES, Format, Preset
from cachetools import TTLCache
from pebble import ProcessExpired, ProcessPool
from PIL import Image
from prometheus_client import Counter

__all__ = ["MediaError", "Rendered", "Transformer"]

T = TypeVar("T")
FAILURE_MEMORY = 60.0  # seconds a failed rendition is answered from memory
MAX_FAILURES = 10_000  # remembered failures per server process
# Failures of the pool itself (e.g. closing) say nothing about the source.
NOT_REMEMBERED = frozenset({"TransformFailed", "Busy"})
BUSY_RETRY_AFTER = 2  # seconds, with a 503 Busy
REMEMBERED = Counter("atcdn_edge_transforms_remembered",
                     "Transforms answered with a remembered failure, no worker asked")


@dataclass(frozen=True)
class Rendered:
    body: bytes
    content_type: str


class Transformer:
    """A pool of isolated image workers; one per server process."""

    def __init__(self, limits: ImageLimits = ImageLimits(),
                 pool: WorkerLimits = WorkerLimits(), decoder_user: str = "") -> None:
        self.limits = limits
        self.pool_limits = pool
        context = multiprocessing.get_context("forkserver")
        # Workers fork from a small server that has Pillow loaded, not from the (threaded,
        # async) server process.
        context.set_forkserver_preload(["atcdn.edge.image"])
        _start_forkserver()
        self._pool = ProcessPool(max_workers=pool.workers, max_tasks=pool.max_tasks,
                                 initializer=_init_worker,
                                 initargs=(pool.memory_mb, decoder_user),
                                 context=context)
        self._failed: TTLCache[str, MediaError] = TTLCache(MAX_FAILURES, FAILURE_MEMORY)
        self.queued = 0  # source bytes of the transforms queued or running here

    @classmethod
    def from_settings(cls, settings: EdgeSettings) -> Transformer:
        return cls(ImageLimits.from_settings(settings), WorkerLimits.from_settings(settings),
                   settings.decoder_user)

    async def transform(self, source: bytes, preset: Preset, fmt: Format,
                        key: str | None = None) -> Rendered:
        """Render ``source`` (verified blob bytes) for ``preset`` in ``fmt``.

        Raises MediaError: 415 unsupported type, 422 undecodable / too many pixels,
        413 too large, 503 worker crashed or timed out, or Busy when the sources already
        waiting for a worker hold ``queue_bytes`` (not remembered). With ``key`` (the rendition's
        cache key) a failure is remembered for FAILURE_MEMORY seconds and answered again
        without a worker.
        """
        failed = self._failed.get(key) if key else None
        if failed is not None:
            REMEMBERED.inc()
            raise MediaError(failed.status, failed.error, f"{failed.message} (remembered)")
        cap = self.pool_limits.queue_bytes
        if self.queued and self.queued + len(source) > cap:
            raise MediaError(503, "Busy", f"image transforms waiting here hold {self.queued}"
                             f" bytes of sources, the cap is {cap}; retry later",
                             retry_after=BUSY_RETRY_AFTER)
        self.queued += len(source)
        try:
            body = await self.run(render, source, preset, fmt, self.limits)
        except MediaError as exc:
            if key and exc.error not in NOT_REMEMBERED:
                self._failed[key] = exc
            raise
        finally:
            self.queued -= len(source)
        return Rendered(body, CONTENT_TYPES[fmt])

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)`` in a worker; crashes and timeouts become a 503."""
        future = self._pool.schedule(function, args, timeout=self.pool_limits.timeout)
        try:
            return await asyncio.wrap_future(future)
        except MediaError:
            raise
        except concurrent.futures.TimeoutError:
            raise MediaError(503, "TransformTimeout",
                             f"transform took over {self.pool_limits.timeout:g} s") from None
        except ProcessExpired as exc:
            raise MediaError(503, "TransformCrashed",
                             f"image worker died (exit code {exc.exitcode})") from None
        except MemoryError:
            raise MediaError(422, "UndecodableMedia",
                             "image needs more memory than allowed") from None
        except concurrent.futures.CancelledError:
            raise
        except Exception as exc:  # e.g. the pool is closing
            raise MediaError(503, "TransformFailed", f"image worker failed: {exc}") from None

    def close(self) -> None:
        self._pool.stop()
        self._pool.join(timeout=5)


def _start_forkserver() -> None:
    """Start this process's fork server (and multiprocessing's resource tracker) with the
    secrets taken out of the environment they are exec'd with.

    multiprocessing passes its children the process environment and offers no way to
    pass another, so the secrets leave ``os.environ`` for the moment of the spawn (a
    few milliseconds, under a lock) and come back at once. A fork server that is already
    running is left as it is.
    """
    with _environ_lock:
        saved = dict(os.environ)
        secret = set(saved) - set(without_secrets(saved))
        for name in secret:
            del os.environ[name]
        try:
            forkserver.ensure_running()
        finally:
            os.environ.update({name: saved[name] for name in secret})


_environ_lock = threading.Lock()


def _init_worker(memory_mb: int, user: str) -> None:
    """Runs in each worker before any task: cap its address space, no core dumps, no
    network, and (when started as root) the decoder user (core/sandbox.py; what the
    platform refuses was logged once by the server)."""
    confine(memory_mb * MiB)
    Image.init()  # every format plugin, imported while the Python files are still readable
    isolate(user)
    os.environ["OMP_NUM_THREADS"] = "1"
