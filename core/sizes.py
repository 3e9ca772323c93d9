"""Byte sizes as operators write them: ``10G``, ``512M``, ``1.5GiB``, ``300MB``, ``4096``.

Pure code. A bare number is bytes. A single-letter suffix (K, M, G, T) and the ``iB``
forms (KiB, MiB, GiB, TiB) are powers of 1024, as in nginx, Varnish and systemd; the SI
forms with a ``B`` (KB, MB, GB, TB) are powers of 1000. Case does not matter, a space
between number and unit is allowed, and a fraction rounds down to whole bytes.
"""

from __future__ import annotations

import re

UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)\s*$")


def parse_size(value: str | int | float) -> int:
    """Bytes in ``value``; ValueError for anything that is not a size."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        return value
    if isinstance(value, float):
        return parse_size(repr(value))
    match = _SIZE.match(str(value).lower())
    if match is None:
        raise ValueError(f"not a size: {value!r} (examples: 4096, 512M, 10G, 1.5GiB, 300MB)")
    number, unit = match.groups()
    if unit not in UNITS:
        raise ValueError(f"unknown size unit {unit!r} in {value!r} (K, M, G, T, KiB.., KB..)")
    if "." in number:
        return int(float(number) * UNITS[unit])
    return int(number) * UNITS[unit]


def format_size(size: int) -> str:
    """A human size in powers of 1024 (``10.0 GiB``), for banners and status lines."""
    amount = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")
