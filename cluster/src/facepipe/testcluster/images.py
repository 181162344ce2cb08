"""Step 7: images, built on this machine with buildah and loaded into the cluster's containerd.

No registry is reachable, so every image starts here:

- ``base``: Debian bookworm with Python 3.11 (debootstrap from Debian's mirror) plus uv, the
  local stand-in for ``python:3.11-slim-bookworm``; the root Dockerfile takes it as ``BASE``;
- the product's images from the root Dockerfile, every instruction executed (``buildah bud``);
- ``pause`` (the sandbox image) and ``coredns``: one static binary on an empty image.

Each image is tagged with a hash of what it is built from, so only a change rebuilds it, and
with the name the charts use by default (``ghcr.io/face-pipeline/<component>:<chart version>``),
so the examples run unchanged. Pods use ``imagePullPolicy: IfNotPresent``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from facepipe.testcluster.layout import REPO_ROOT, RunDir, cache_dir
from facepipe.testcluster.node import ctr

BASE_IMAGE = "localhost/facepipe/python-base:3.11-bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Product:
    component: str  # image name: detector, embedder, indexer, ops-api, operator
    package: str
    module: str


PRODUCT = (
    Product("detector", "facepipe-detector", "facepipe.detector"),
    Product("embedder", "facepipe-embedder", "facepipe.embedder"),
    Product("indexer", "facepipe-indexer", "facepipe.indexer"),
    Product("ops-api", "facepipe-ops-api", "facepipe.ops_api"),
    Product("operator", "facepipe-operator", "facepipe.operator"),
)


def _run(cmd: list, log: Path, cwd: Path | None = None) -> str:
    with log.open("ab") as sink:
        sink.write(f"\n$ {' '.join(map(str, cmd))}\n".encode())
        sink.flush()
        result = subprocess.run([str(c) for c in cmd], cwd=cwd, stdout=subprocess.PIPE, stderr=sink)
        sink.write(result.stdout)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[0]} {cmd[1]} failed (exit {result.returncode}); see {log}")
    return result.stdout.decode().strip()


def buildah_has(image: str) -> bool:
    return (
        subprocess.run(["buildah", "inspect", "--type", "image", image], capture_output=True).returncode == 0
    )


def _in_containerd(run: RunDir, image: str) -> bool:
    return image in ctr(run, "images", "ls", "-q").stdout.split()


def load(run: RunDir, image: str, aliases: tuple[str, ...], log: Path) -> None:
    """Copy a buildah image into containerd's k8s.io namespace, under its name and aliases."""
    if not _in_containerd(run, image):
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            archive = Path(tmp) / "image.tar"
            _run(["buildah", "push", "--quiet", image, f"docker-archive:{archive}:{image}"], log)
            out = ctr(run, "images", "import", "--no-unpack=false", str(archive))
            if out.returncode != 0:
                raise RuntimeError(f"ctr import of {image} failed: {out.stderr.strip()}")
    for alias in aliases:
        ctr(run, "images", "rm", alias)
        out = ctr(run, "images", "tag", image, alias)
        if out.returncode != 0:
            raise RuntimeError(f"ctr tag {image} {alias} failed: {out.stderr.strip()}")


def base_image(log: Path) -> str:
    """Debian bookworm + python3.11 + uv, committed as BASE_IMAGE (debootstrap on a miss)."""
    if buildah_has(BASE_IMAGE):
        return BASE_IMAGE
    uv = shutil.which("uv") or str(REPO_ROOT / ".venv" / "bin" / "uv")
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3.11,ca-certificates",
                "bookworm",
                rootfs,
                DEBIAN_MIRROR,
            ],
            log,
        )
        shutil.copy2(uv, rootfs / "usr" / "local" / "bin" / "uv")
        # This machine reaches the package registries through a TLS-inspecting egress proxy: its
        # trust store (Debian's roots plus the proxy's CA) goes into the base, so RUN steps trust
        # what the host trusts. A base for another machine would carry that machine's store.
        shutil.copy2(HOST_CA_BUNDLE, rootfs / "etc" / "ssl" / "certs" / "ca-certificates.crt")
        for link, target in (("python3", "python3.11"), ("python", "python3.11")):
            path = rootfs / "usr" / "local" / "bin" / link
            if not path.exists():
                path.symlink_to(f"/usr/bin/{target}")
        container = _run(["buildah", "from", "scratch"], log)
        try:
            _run(["buildah", "copy", "--quiet", container, f"{rootfs}/", "/"], log)
            env = [
                "--env",
                "LANG=C.UTF-8",
                "--env",
                f"SSL_CERT_FILE={HOST_CA_BUNDLE}",
                "--env",
                f"PATH={PATH}",
            ]
            _run(["buildah", "config", *env, "--cmd", "python3", container], log)
            _run(["buildah", "commit", "--quiet", container, BASE_IMAGE], log)
        finally:
            subprocess.run(["buildah", "rm", container], capture_output=True)
    return BASE_IMAGE


def _files(paths: list[Path]) -> list[str]:
    """The files git would commit under ``paths`` (tracked, or new and not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", *map(str, paths)],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return sorted({name.decode() for name in listed if name and (REPO_ROOT / name.decode()).is_file()})


def image_id(image: str) -> str:
    return subprocess.run(
        ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def source_hash(paths: list[Path], extra: str = "") -> str:
    """A hash of the files under ``paths`` (names, contents) and of ``extra`` (the base image id): the tag."""
    digest = hashlib.sha256(extra.encode())
    for name in _files(paths):
        digest.update(name.encode() + b"\0" + (REPO_ROOT / name).read_bytes())
    return digest.hexdigest()[:12]


def copy_tree(source: Path, target: Path) -> None:
    """The workspace's files (as git sees them) copied to ``target``: a build context."""
    for name in _files([source]):
        if name == ".dockerignore":  # it keeps development members' sources out of product images
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target / name)


def product_images(run: RunDir, log: Path, chart_version: str, base: str = BASE_IMAGE) -> dict[str, str]:
    """Build (on a miss) and load every product image; returns component -> image reference."""
    inputs = [
        REPO_ROOT / p
        for p in (
            "Dockerfile",
            ".dockerignore",
            "pyproject.toml",
            "uv.lock",
            "libs",
            "services",
            "operator",
            "sim/pyproject.toml",
            "cluster/pyproject.toml",
        )
    ]
    tag = source_hash(inputs, extra=image_id(base))
    built = {}
    for product in PRODUCT:
        image = f"localhost/facepipe/{product.component}:{tag}"
        if not buildah_has(image):
            args = {"BASE": base, "PACKAGE": product.package, "MODULE": product.module}
            bud(image, REPO_ROOT / "Dockerfile", REPO_ROOT, args, log)
        load(run, image, (f"ghcr.io/face-pipeline/{product.component}:{chart_version}",), log)
        built[product.component] = image
    return built


def bud(image: str, containerfile: Path, context: Path, build_args: dict[str, str], log: Path) -> None:
    """``buildah bud``: every instruction executed; RUN steps reach the package registries (host network)."""
    # runc, as the cluster: crun (when installed) refuses cgroup v1 hybrid hosts.
    cmd: list = [
        "buildah",
        "bud",
        "--quiet",
        "--runtime",
        "runc",
        "--network",
        "host",
        "--layers",
        "--pull=never",
    ]
    for key, value in build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    _run([*cmd, "-f", containerfile, "-t", image, context], log)


def binary_image(run: RunDir, name: str, binary: Path, entrypoint: list[str], log: Path, version: str) -> str:
    """An image holding one static binary (pause, coredns), built on a miss and loaded."""
    image = f"localhost/facepipe/{name}:{version}"
    if not buildah_has(image):
        container = _run(["buildah", "from", "scratch"], log)
        try:
            _run(["buildah", "copy", "--quiet", "--chmod", "0755", container, binary, f"/{binary.name}"], log)
            _run(
                [
                    "buildah",
                    "config",
                    "--entrypoint",
                    repr(entrypoint).replace("'", '"'),
                    "--user",
                    "65532:65532",
                    container,
                ],
                log,
            )
            _run(["buildah", "commit", "--quiet", container, image], log)
        finally:
            subprocess.run(["buildah", "rm", container], capture_output=True)
    load(run, image, (), log)
    return image
