"""``python -m bench.whatif --patches a,b -- facepipe.detector [args]``: run a service with proposed
changes applied in memory, to measure them end to end before anyone edits the real module.

Only the benchmark uses this (``python -m bench --whatif decode,aspect,nospin``). Patches:

* ``decode``: ``imaging.decode_image`` with Pillow's strict decode but one RGB→BGR conversion
  instead of four copies (EXIF transpose only when the image has an orientation tag);
* ``aspect``: SCRFD detects on an input of the image's aspect ratio (longer side DET_SIZE,
  padded to a multiple of 32) instead of the DET_SIZE square letterbox;
* ``nospin``: ORT sessions with ``session.intra_op.allow_spinning=0`` (matters when
  ORT_INTRA_OP_THREADS is not 1).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import runpy
import sys
from collections.abc import Callable, Iterator, Sequence

PATCHES = ("decode", "aspect", "nospin")


Undo = Callable[[], None]


def _replace(module: object, name: str, value: object) -> Undo:
    original = getattr(module, name)
    setattr(module, name, value)
    return lambda: setattr(module, name, original)


def patch_decode() -> Undo:
    import cv2
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    from facepipe.core.errors import PermanentError
    from facepipe.vision import imaging

    original = imaging.decode_image

    def decode_image(data: bytes, limits: imaging.ImageLimits) -> np.ndarray:
        # Same checks and errors as the original (it runs them on the header first).
        if len(data) > limits.max_bytes:
            return original(data, limits)
        try:
            image = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return original(data, limits)
        with image:
            width, height = image.size
            plain = (
                image.format in imaging.SUPPORTED_FORMATS
                and image.mode == "RGB"
                and 0 < width <= limits.max_side
                and 0 < height <= limits.max_side
                and width * height <= limits.max_pixels
            )
            if not plain:
                return original(data, limits)  # other modes, limits, errors: the original path
            try:
                image.load()
                oriented = ImageOps.exif_transpose(image) if image.getexif().get(0x0112, 1) != 1 else image
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                raise PermanentError(
                    "corrupt_image", f"{image.format} image does not decode: {exc}"
                ) from None
            return cv2.cvtColor(np.asarray(oriented), cv2.COLOR_RGB2BGR)

    return _replace(imaging, "decode_image", decode_image)


def patch_aspect() -> Undo:
    import numpy as np

    from facepipe.vision.models import detectors

    def _detect(self: detectors.ScrfdDetector, img: np.ndarray) -> list[detectors.Detection]:
        height, width = img.shape[:2]
        scale = self.det_size / max(height, width)
        size = (max(32, -(-round(width * scale) // 32) * 32), max(32, -(-round(height * scale) // 32) * 32))
        boxes, kpss = self._model.detect(img, input_size=size)
        return [
            detectors.Detection(box[:4].astype(np.float32), kps.astype(np.float32), float(box[4]))
            for box, kps in zip(boxes, kpss, strict=True)
        ]

    return _replace(detectors.ScrfdDetector, "_detect", _detect)


def patch_nospin() -> Undo:
    import onnxruntime as ort

    from facepipe.vision.models import detectors, embedders, runtime

    original = runtime.session_options

    def session_options(intra_op_threads: int) -> ort.SessionOptions:
        options = original(intra_op_threads)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    # The model modules imported the function by name.
    undos = [
        _replace(module, "session_options", session_options) for module in (runtime, detectors, embedders)
    ]
    return lambda: [undo() for undo in undos] and None


@contextlib.contextmanager
def applied(names: Sequence[str]) -> Iterator[None]:
    """The patches in effect inside the block (in this process)."""
    undos = [apply(name) for name in names]
    try:
        yield
    finally:
        for undo in reversed(undos):
            undo()


def apply(name: str) -> Undo:
    if name not in PATCHES:
        raise ValueError(f"unknown patch {name!r}; known: {', '.join(PATCHES)}")
    return globals()[f"patch_{name}"]()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.whatif")
    parser.add_argument("--patches", default="", help=f"comma-separated subset of {PATCHES}")
    parser.add_argument("module")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    for name in filter(None, args.patches.split(",")):
        if name not in PATCHES:
            parser.error(f"unknown patch {name!r}; known: {', '.join(PATCHES)}")
        apply(name)
    sys.argv = [args.module, *args.args]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
