"""The environment a process that decodes hostile files may inherit (pure).

Image workers and video transcoders run decoders on strangers' bytes; an exploit there
must find no credential to steal in ``/proc/self/environ``. They get the parent's
environment minus every ``ATCDN_*`` variable (they take their limits as arguments, never
from settings), every ``AWS_*`` one, and anything whose name looks like a secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

SECRET_NAME = re.compile(
    r"^(ATCDN_|AWS_)|TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|PRIVATE|(^|_)KEY(_|$)"
    r"|API_?KEY|AUTH|COOKIE|SESSION|SIGNING|CERT", re.IGNORECASE)


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` minus the variables a decoder must not hold."""
    return {name: value for name, value in environ.items() if not SECRET_NAME.search(name)}
