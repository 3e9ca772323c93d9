"""Decoder processes off the network and, when started as root, under their own user.

The image workers (edge/transform.py) and the transcoder child (edge/video.py) decode
strangers' bytes; an exploit there should reach nothing. Each calls ``isolate(user)``
before it touches a byte:

- it leaves the host's network: a new, empty network namespace (``unshare(2)`` with
  ``CLONE_NEWNET``; as a non-root user together with ``CLONE_NEWUSER``, which needs
  unprivileged user namespaces). Its only interface is a loopback that is down: no TCP or
  UDP connection to anything, 127.0.0.1 included.
- started as root, it switches to ``user`` (``ATCDN_EDGE_DECODER_USER``, default
  ``nobody``); otherwise it keeps the service's user.

What the platform refuses (a container without the capability, a kernel without user
namespaces) is returned, not raised: the decoder goes on without it. ``probe`` runs
``isolate`` in a throw-away child so a server can log once what its decoders lack.
Linux only; elsewhere every step is reported missing.
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import subprocess
import sys

from atcdn.core.environment import without_secrets

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "unshare"):
        raise OSError(0, "unshare(2) is not available on this platform")
    if libc.unshare(flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _searchable(path: str, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` may pass through every directory above ``path`` and read
    it (permission bits only: no ACLs)."""
    current = os.path.abspath(path)
    while True:
        try:
            st = os.stat(current)
        except OSError:
            return False
        need = 0o5 if current == os.path.abspath(path) else 0o1  # r-x at the end, x above
        bits = (st.st_mode >> 6 if st.st_uid == uid else
                st.st_mode >> 3 if st.st_gid == gid else st.st_mode) & 0o7
        if bits & need != need:
            return False
        parent = os.path.dirname(current)
        if parent == current:
            return True
        current = parent


def _code_paths() -> list[str]:
    """What a decoder still imports after the switch: the interpreter's libraries and
    atcdn's own package."""
    import atcdn.core
    return [sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(atcdn.core.__file__))]


def _become(user: str) -> str | None:
    """Switch this (root) process to ``user`` for good; what failed, or None. A user
    who cannot reach the interpreter's or atcdn's files is not switched to (the decoder
    would die at its next import, e.g. a checkout under a private home or temp dir)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return f"no user {user!r} to run decoders as"
    for path in _code_paths():
        if not _searchable(path, entry.pw_uid, entry.pw_gid):
            return f"user {user!r} cannot read {path}: decoders stay root"
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    return None


def user_ids(user: str) -> tuple[int, int] | None:
    """(uid, gid) of ``user`` when this process would switch to it (root), else None."""
    if os.geteuid() != 0 or not user:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    if not all(_searchable(path, entry.pw_uid, entry.pw_gid) for path in _code_paths()):
        return None
    return entry.pw_uid, entry.pw_gid


def isolate(user: str) -> list[str]:
    """Take this process off the network and, as root, to ``user`` ('' keeps root).
    Returns what could not be done (empty: fully isolated)."""
    missing: list[str] = []
    root = os.geteuid() == 0
    networked = True
    if root:
        try:
            _unshare(CLONE_NEWNET)
            networked = False
        except OSError:
            pass  # e.g. a container without CAP_SYS_ADMIN: try as the user, below
        if user and (failed := _become(user)) is not None:
            missing.append(failed)
    if networked:
        try:
            _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        except OSError as exc:
            missing.append(f"no network namespace ({exc.strerror or exc})")
    return missing


def probe(user: str) -> list[str]:
    """What ``isolate(user)`` cannot do here, tried in a child process."""
    try:
        done = subprocess.run([sys.executable, "-m", "atcdn.core.sandbox", user],
                              capture_output=True, timeout=30, env=without_secrets(os.environ),
                              check=True)
        return list(json.loads(done.stdout))
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return [f"the probe failed: {exc!r}"]


if __name__ == "__main__":
    print(json.dumps(isolate(sys.argv[1] if len(sys.argv) > 1 else "")))
