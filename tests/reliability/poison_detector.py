"""The real detector service with one planted bug, for the poison-pill scenario (test-only, never shipped).

No input crashes the real services once the hostile-input scenario's defects are fixed, so
the crash is planted here, outside the services: an image whose bytes start with
``POISON_MARKER`` makes the image decoder fail every time, as a decoder bug would.
POISON_MODE=raise (default) raises an unexpected exception (the worker survives; the
delivery counts as crashed); POISON_MODE=segfault kills the whole process with SIGSEGV, as
a crashing native decoder would (the harness restarts it, like Kubernetes would).
Everything else is the real ``python -m facepipe.detector``.
"""

from __future__ import annotations

import os
import signal
import sys

from facepipe.detector import __main__ as detector_main
from facepipe.detector import handler as detector_handler
from facepipe.vision.imaging import ImageLimits

POISON_MARKER = b"\xff\xd8POISON-PILL"
_real_decode = detector_handler.decode_image


def _decode_with_bug(data: bytes, limits: ImageLimits):  # type: ignore[no-untyped-def]
    if data.startswith(POISON_MARKER):
        if os.environ.get("POISON_MODE") == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        raise RuntimeError("simulated decoder bug: this image crashes the decoder every time")
    return _real_decode(data, limits)


if __name__ == "__main__":
    detector_handler.decode_image = _decode_with_bug
    sys.exit(detector_main.main())
