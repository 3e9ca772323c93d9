"""The transform interface the edge server calls, and the worker pool behind it.

Decoders are the riskiest code an edge runs on untrusted bytes, so the pipeline
(edge/image.py) never runs in the server process: it runs in a pool of worker processes
(pebble), each under an address-space limit (RLIMIT_AS), each task under a timeout. A
decoder that segfaults or runs away costs one request (503) and one worker, which the pool
replaces; a MemoryError is the source's fault (422). Workers are long-lived and forked
from a clean fork server, so a request costs no process start, and only the source bytes
and the rendition cross the process boundary.

The edge's app factory builds one ``Transformer.from_settings(settings)`` per server
process (its workers start with the first transform) and closes it on shutdown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from atcdn.core.limits import ImageLimits, MiB, WorkerLimits, confine
from atcdn.core.settings import EdgeSettings
from atcdn.edge.image import MediaError, render
from atcdn.edge.presets import CONTENT_TYPES, Format, Preset
from pebble import ProcessExpired, ProcessPool

__all__ = ["MediaError", "Rendered", "Transformer"]

T = TypeVar("T")


@dataclass(frozen=True)
class Rendered:
    body: bytes
    content_type: str


class Transformer:
    """A pool of isolated image workers; one per server process."""

    def __init__(self, limits: ImageLimits = ImageLimits(),
                 pool: WorkerLimits = WorkerLimits()) -> None:
        self.limits = limits
        self.pool_limits = pool
        context = multiprocessing.get_context("forkserver")
        # Workers fork from a small server that has Pillow loaded, not from the (threaded,
        # async) server process.
        context.set_forkserver_preload(["atcdn.edge.image"])
        self._pool = ProcessPool(max_workers=pool.workers, max_tasks=pool.max_tasks,
                                 initializer=_init_worker, initargs=(pool.memory_mb,),
                                 context=context)

    @classmethod
    def from_settings(cls, settings: EdgeSettings) -> Transformer:
        return cls(ImageLimits.from_settings(settings), WorkerLimits.from_settings(settings))

    async def transform(self, source: bytes, preset: Preset, fmt: Format) -> Rendered:
        """Render ``source`` (verified blob bytes) for ``preset`` in ``fmt``.

        Raises MediaError: 415 unsupported type, 422 undecodable / too many pixels,
        413 too large, 503 worker crashed or timed out.
        """
        body = await self.run(render, source, preset, fmt, self.limits)
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


def _init_worker(memory_mb: int) -> None:
    """Runs in each worker before any task: cap its address space, no core dumps."""
    confine(memory_mb * MiB)
    os.environ["OMP_NUM_THREADS"] = "1"
