"""Step 1: the cluster's binaries, built from their Go modules once per version and cached.

``cluster/modules/kubernetes`` requires ``k8s.io/kubernetes`` and pins its staging modules
(the ``replace`` lines of its own go.mod at the matching v0.x release); one ``go build tool``
builds the five server binaries and kubectl, version-stamped so that ``kubectl version`` and
charts' ``kubeVersion`` checks see the real release. ``cluster/modules/tools`` builds helm
and a CoreDNS with the cluster-DNS plugins. The pause container is ``pause.c`` from the
kubernetes module, compiled statically. A build goes to a temporary folder and is renamed into
place, so an interrupted build never leaves a half-filled cache entry.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from facepipe.testcluster.layout import KUBERNETES_VERSION, MODULES, cache_dir

KUBERNETES_BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
)
TOOL_BINARIES = ("helm", "coredns")


def _module_key(module: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(module.rglob("*")):
        if path.is_file() and path.suffix in (".mod", ".sum", ".go"):
            digest.update(path.relative_to(module).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _go_env() -> dict[str, str]:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists():
        raise FileNotFoundError("go not found: the test cluster is built from Go modules (Go 1.24 or newer)")
    return {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOFLAGS": "-buildvcs=false",
        "PATH": f"{Path(go).parent}:{os.environ['PATH']}",
    }


def _go_build(module: Path, out: Path, packages: list[str], ldflags: str, log: Path) -> None:
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cmd = ["go", "build", "-trimpath", "-o", str(tmp) + "/", "-ldflags", ldflags, *packages]
    with log.open("ab") as sink:
        sink.write(f"\n$ (cd {module}) {' '.join(cmd)}\n".encode())
        sink.flush()
        result = subprocess.run(cmd, cwd=module, env=_go_env(), stdout=sink, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"go build in {module} failed (exit {result.returncode}); see {log}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def kubernetes_binaries(log: Path) -> Path:
    """The folder holding kube-apiserver, ..., kubectl of KUBERNETES_VERSION (built on a miss)."""
    module = MODULES / "kubernetes"
    out = cache_dir() / "bin" / f"kubernetes-{KUBERNETES_VERSION}-{_module_key(module)}"
    if all((out / name).exists() for name in KUBERNETES_BINARIES):
        return out
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    base = "k8s.io/component-base/version"
    stamp = [
        f"{base}.gitVersion={KUBERNETES_VERSION}",
        f"{base}.gitMajor={major}",
        f"{base}.gitMinor={minor}",
        f"{base}.gitTreeState=clean",
        f"k8s.io/client-go/pkg/version.gitVersion={KUBERNETES_VERSION}",
    ]
    flags = " ".join(f"-X {item}" for item in stamp)
    _go_build(module, out, ["tool"], f"-s -w {flags}", log)
    return out


def tool_binaries(log: Path) -> Path:
    """The folder holding helm and coredns (built on a miss)."""
    module = MODULES / "tools"
    out = cache_dir() / "bin" / f"tools-{_module_key(module)}"
    if all((out / name).exists() for name in TOOL_BINARIES):
        return out
    _go_build(module, out, ["tool", "./coredns"], "-s -w", log)
    return out


def pause_binary(log: Path) -> Path:
    """The pause container's program, from the kubernetes module's build/pause/linux/pause.c."""
    out = cache_dir() / "bin" / f"pause-{KUBERNETES_VERSION}" / "pause"
    if out.exists():
        return out
    source = (
        Path(
            subprocess.run(
                ["go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"],
                cwd=MODULES / "kubernetes",
                env=_go_env(),
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
        / "build"
        / "pause"
        / "linux"
        / "pause.c"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        "gcc",
        "-Os",
        "-static",
        "-Wall",
        "-Werror",
        f'-DVERSION="{KUBERNETES_VERSION}"',
        "-o",
        str(out) + ".partial",
        str(source),
    ]
    with log.open("ab") as sink:
        subprocess.run(cmd, check=True, stdout=sink, stderr=subprocess.STDOUT)
    Path(str(out) + ".partial").rename(out)
    return out


def build_all(log: Path) -> dict[str, Path]:
    """Every binary the cluster runs that is not a Debian package, by name."""
    started = time.monotonic()
    kube = kubernetes_binaries(log)
    tools = tool_binaries(log)
    pause = pause_binary(log)
    found = {name: kube / name for name in KUBERNETES_BINARIES}
    found.update({name: tools / name for name in TOOL_BINARIES})
    found["pause"] = pause
    with log.open("a") as sink:
        sink.write(f"binaries ready in {time.monotonic() - started:.0f}s\n")
    return found
