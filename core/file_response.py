"""Stored files sent as response bodies: the origin's blobs, the edge's largest entries.

Under granian a ``FileResponse`` goes out zero-copy (``http.response.pathsend``). uvicorn,
the default server, has no such extension, so Starlette reads the file and sends it chunk
by chunk, each read a hop to a worker thread: with Starlette's 64 KiB chunks a 50 MB blob
took 165 ms to GET from the origin against granian's 37 ms; 1 MiB chunks take 48 ms
(4 MiB: 38 ms, but that much memory per download in flight). One chunk per response is
held at a time.
"""

from __future__ import annotations

from starlette import responses


class FileResponse(responses.FileResponse):
    chunk_size = 1024 * 1024
