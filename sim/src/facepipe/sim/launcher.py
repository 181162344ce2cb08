"""What a container runtime does for one pod, in the Python standard library only.

The kubelet stand-in runs this file with the system interpreter, as root, once per
pod sandbox and once per container start:

``python3.11 launcher.py sandbox HOSTNAME``
    The pod's "pause" process: new network, UTS and IPC namespaces (the pod's own
    address, hostname and ports), held until it is signalled. Prints ``ready PID``.

``python3.11 launcher.py guardian``
    Reads ``+PGID`` / ``-PGID`` lines (process groups to watch over, or to forget) from its
    stdin, a pipe from the simulation; when the pipe closes, however the simulation ended
    (even SIGKILL), it kills every group still listed. For host processes that the
    simulation starts outside any pod (the backing servers, the operator).

``python3.11 launcher.py container PLAN.json``
    One container: joins the sandbox's namespaces, builds the container's root in a
    private mount namespace (a tmpfs holding bind mounts of the host's read-only system
    folders, the image's environment, the pod's volumes and /etc/hosts), then forks the
    container's first process into a new PID namespace, chroots, drops to the pod's
    user and groups and execs the command. This process stays as its supervisor:
    it forwards SIGTERM and friends to the container's PID 1 (which, as in a real
    container, only sees signals it handles), and exits with its status (128+signal
    when killed). Killing the supervisor kills the container: the child's
    parent-death signal is SIGKILL, and the end of PID 1 ends its whole namespace.

Nothing here touches the host's own folders: every mount point is made inside the
container's tmpfs root, which vanishes with its mount namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import signal
import socket
import stat
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38

# Exit codes of the supervisor that are not the container's own: the kubelet turns
# them into a container state with a reason instead of an exit code.
EXIT_SETUP_FAILED = 125  # the runtime could not create the container (docker's 125)
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """The container cannot be created as planned."""


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(code)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source or fstype} on {target}",
    )


def _die_with_parent() -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def _enter(pid: int, flag: int, name: str) -> None:
    fd = os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY)
    try:
        _check(_libc.setns(fd, flag), f"setns {name} of {pid}")
    finally:
        os.close(fd)


# --- the sandbox ---------------------------------------------------------------------------------


def run_sandbox(hostname: str) -> int:
    _die_with_parent()
    _check(_libc.unshare(CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC), "unshare(net, uts, ipc)")
    socket.sethostname(hostname)
    for sig in FORWARDED:
        signal.signal(sig, lambda *_: sys.exit(0))
    print(f"ready {os.getpid()}", flush=True)
    while True:
        signal.pause()


# --- the container's root ---------------------------------------------------------------------


def _inside(root: str, path: str) -> str:
    """``path`` of the container, as a host path under ``root`` (never outside it)."""
    clean = os.path.normpath("/" + path).lstrip("/")
    return os.path.join(root, clean) if clean else root


def _make_dirs(root: str, path: str) -> str:
    """Create ``path`` inside the container's root, refusing to follow a link out of it."""
    current = root
    for part in os.path.normpath("/" + path).strip("/").split("/"):
        if not part:
            continue
        current = os.path.join(current, part)
        if os.path.islink(current):
            raise SetupError(f"mount point {path}: {current[len(root) :]} is a symbolic link")
        if not os.path.exists(current):
            try:
                os.mkdir(current, 0o755)
            except OSError as exc:
                raise SetupError(f"cannot create mount point {path}: {exc.strerror}") from None
    return current


def _make_file(root: str, path: str) -> str:
    target = _inside(root, path)
    _make_dirs(root, os.path.dirname(path))
    if not os.path.exists(target):
        try:
            with open(target, "w"):
                pass
        except OSError as exc:
            raise SetupError(f"cannot create mount point {path}: {exc.strerror}") from None
    return target


def _apply_mount(root: str, mount: dict) -> None:
    kind = mount["kind"]
    target_path = mount["target"]
    if kind == "symlink":
        os.symlink(mount["source"], _inside(root, target_path))
        return
    if kind == "proc":
        _make_dirs(root, target_path)  # mounted by the container's first process, in its PID namespace
        return
    readonly = bool(mount.get("readonly"))
    if kind == "dir":
        target = _make_dirs(root, target_path)
        os.chmod(target, int(mount.get("mode", "755"), 8))
        os.chown(target, int(mount.get("uid", 0)), int(mount.get("gid", 0)))
        return
    if kind == "overlay":
        # A writable layer over a host folder (as an image layer): writes land in the tmpfs root.
        layers = os.path.join(os.path.dirname(root), "layers", mount["target"].strip("/").replace("/", "_"))
        upper, work = os.path.join(layers, "upper"), os.path.join(layers, "work")
        os.makedirs(upper, exist_ok=True)
        os.makedirs(work, exist_ok=True)
        target = _make_dirs(root, target_path)
        _mount("overlay", target, "overlay", 0, f"lowerdir={mount['source']},upperdir={upper},workdir={work}")
        return
    if kind == "tmpfs":
        target = _make_dirs(root, target_path)
        _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mount.get('mode', '755')}")
        if readonly:
            _mount(None, target, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        return
    if kind != "bind":
        raise SetupError(f"unknown mount kind {kind!r}")
    source = mount["source"]
    if not os.path.exists(source):
        raise SetupError(f"mount source {source} does not exist")
    if stat.S_ISDIR(os.stat(source).st_mode):
        target = _make_dirs(root, target_path)
    else:
        target = _make_file(root, target_path)
    flags = MS_BIND | (MS_REC if mount.get("recursive") else 0)
    _mount(source, target, None, flags)
    if readonly:
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def build_root(plan: dict) -> None:
    """The root (and the overlay layers beside it, ``../layers``) are tmpfs of this namespace."""
    root = plan["rootfs"]
    layers = os.path.join(os.path.dirname(root), "layers")
    os.makedirs(layers, exist_ok=True)
    _mount("tmpfs", layers, "tmpfs", MS_NOSUID | MS_NODEV, "mode=700")
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    for mount in plan["mounts"]:
        _apply_mount(root, mount)
    if plan.get("readonly_root"):
        # readOnlyRootFilesystem: the image's own file system (root, layers, /tmp...) cannot be
        # written; volumes mounted on it keep their own mode. A layer that a volume covers at the
        # same path (an emptyDir at /tmp) is out of reach anyway, and remounting the path would
        # reach the volume on top (EBUSY).
        mounts = plan["mounts"]
        for n, mount in enumerate(mounts):
            covered = any(later["target"] == mount["target"] for later in mounts[n + 1 :])
            if mount.get("image_layer") and not covered:
                _mount(
                    None, _inside(root, mount["target"]), None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
                )
        _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def bind_over_host(plan: dict) -> None:
    """Host-root mode: the host's own tree, with a few files bound over (e.g. /etc/hosts)."""
    for mount in plan["mounts"]:
        if mount["kind"] != "bind" or not os.path.exists(mount["target"]):
            raise SetupError(f"host mode binds only over existing paths, not {mount['target']}")
        _mount(mount["source"], mount["target"], None, MS_BIND)
        if mount.get("readonly"):
            _mount(None, mount["target"], None, MS_BIND | MS_REMOUNT | MS_RDONLY)


# --- the container's first process ---------------------------------------------------------------


def _first_process(plan: dict, report_fd: int) -> None:
    """In the child (PID 1 of the new namespace): proc, chroot, user, exec. Never returns."""
    try:
        root = plan.get("rootfs")
        if root:
            if any(m["kind"] == "proc" for m in plan["mounts"]):
                _mount("proc", _make_dirs(root, "/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            os.chroot(root)
        else:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        try:
            os.chdir(plan.get("workdir") or "/")
        except OSError as exc:
            raise SetupError(f"working directory {plan.get('workdir')}: {exc.strerror}") from None
        if plan.get("drop_all_capabilities"):
            # capabilities.drop [ALL]: an empty bounding set, so not even root keeps any after exec.
            for capability in range(64):
                if _libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                    break
        if plan.get("no_new_privileges"):  # allowPrivilegeEscalation: false
            _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        os.setgroups([int(g) for g in plan.get("groups", [])])
        os.setresgid(int(plan["gid"]), int(plan["gid"]), int(plan["gid"]))
        os.setresuid(int(plan["uid"]), int(plan["uid"]), int(plan["uid"]))
        _die_with_parent()  # after setuid: a credential change clears it
        os.umask(0o022)
        env = {str(k): str(v) for k, v in plan["env"].items()}
        argv = [str(a) for a in plan["argv"]]
        if not argv:
            raise SetupError("no command: the container sets none and the image has no ENTRYPOINT/CMD")
        os.close(report_fd)
        try:
            os.execvpe(argv[0], argv, env)
        except OSError as exc:
            code = EXIT_NOT_FOUND if exc.errno == errno.ENOENT else EXIT_NOT_EXECUTABLE
            print(f"exec {argv[0]!r}: {exc.strerror}", file=sys.stderr, flush=True)
            os._exit(code)
    except (SetupError, OSError) as exc:
        message = str(exc) if isinstance(exc, SetupError) else f"{exc.strerror}: {exc.filename or ''}"
        os.write(report_fd, message.encode()[:4000])
        os._exit(EXIT_SETUP_FAILED)


def run_container(plan: dict) -> int:
    _die_with_parent()
    try:
        sandbox = plan.get("sandbox_pid")
        if sandbox:
            _enter(int(sandbox), CLONE_NEWNET, "net")
            _enter(int(sandbox), CLONE_NEWUTS, "uts")
            _enter(int(sandbox), CLONE_NEWIPC, "ipc")
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID), "unshare(mnt, pid)")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        if plan.get("rootfs"):
            build_root(plan)
        else:
            bind_over_host(plan)
        if plan.get("cgroup_procs"):
            for path in plan["cgroup_procs"]:
                with open(path, "w") as handle:
                    handle.write(str(os.getpid()))
    except (SetupError, OSError) as exc:
        print(f"facepipe-sim: container setup failed: {exc}", file=sys.stderr, flush=True)
        _write_reason(plan, str(exc))
        return EXIT_SETUP_FAILED
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        os.close(read_fd)
        _first_process(plan, write_fd)
    os.close(write_fd)
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, _frame: _forward(child, signum))
    if plan.get("pidfile"):
        with open(plan["pidfile"], "w") as handle:
            handle.write(str(child))
    failure = b""
    while chunk := _read(read_fd):
        failure += chunk
    os.close(read_fd)
    status = _wait(child)
    if failure:
        print(f"facepipe-sim: container setup failed: {failure.decode(errors='replace')}", file=sys.stderr)
        _write_reason(plan, failure.decode(errors="replace"))
        return EXIT_SETUP_FAILED
    return status


def _write_reason(plan: dict, reason: str) -> None:
    if plan.get("reasonfile"):
        with open(plan["reasonfile"], "w") as handle:
            handle.write(reason)


def _read(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, 4096)
        except InterruptedError:
            continue


def _forward(child: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signum)


def _wait(child: int) -> int:
    while True:
        try:
            _, status = os.waitpid(child, 0)
        except InterruptedError:
            continue
        if os.WIFEXITED(status):
            return os.WEXITSTATUS(status)
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)


def run_guardian() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is the simulation's to handle
    groups: set[int] = set()
    for line in sys.stdin:
        word = line.strip()
        if word[:1] in "+-" and word[1:].isdigit():
            (groups.add if word[0] == "+" else groups.discard)(int(word[1:]))
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    return 0


def main(argv: list[str]) -> int:
    if argv == ["guardian"]:
        return run_guardian()
    if len(argv) == 2 and argv[0] == "sandbox":
        return run_sandbox(argv[1])
    if len(argv) == 2 and argv[0] == "container":
        with open(argv[1]) as handle:
            return run_container(json.load(handle))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
