"""`python -m facepipe.testcluster up --dir .cluster`: the cluster until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from facepipe.testcluster.cluster import Cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="facepipe-testcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring the cluster up, print `cluster ready`, stay until Ctrl-C/SIGTERM")
    up.add_argument("--dir", type=Path, default=Path(".cluster"))
    up.add_argument("--no-product", action="store_true", help="skip the product's images (the cluster alone)")
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        print("the test cluster runs containerd, the kubelet and iptables: run it as root", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        if not ready.is_set():
            raise KeyboardInterrupt  # stops start() where it is; start() tears down what it made
        stop.set()

    ready = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    cluster = Cluster(args.dir, product=not args.no_product)
    try:
        cluster.start()
    except KeyboardInterrupt:
        print("stopped before the cluster was ready; everything it made is removed", file=sys.stderr)
        return 130
    except Exception as exc:  # start() has already torn down what it made
        print(f"cluster failed: {exc}", file=sys.stderr)
        return 1
    ready.set()
    print(f"kubeconfig: {cluster.kubeconfig}", flush=True)
    print("cluster ready", flush=True)
    while not stop.wait(1.0):
        pass
    cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
