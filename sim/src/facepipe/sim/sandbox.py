"""``python -m facepipe.sim.sandbox``: an emulated Kubernetes API plus the operator, in one process.

Starts the KMock-based API emulator on 127.0.0.1 (built-in kinds, KEDA's kinds and the
FacePipeline CRD registered), writes a kubeconfig for kubectl, then runs the Kopf
operator against it in the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from facepipe.sim.emulator import EmulatorServer, write_kubeconfig

DEFAULT_CRD = Path("crds/facepipelines.facepipe.io.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facepipe.sim.sandbox", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path(".sandbox"), help="where the kubeconfig goes")
    parser.add_argument("--port", type=int, default=0, help="API port on 127.0.0.1 (default: a free one)")
    parser.add_argument(
        "--crd",
        type=Path,
        action="append",
        default=None,
        help=f"CRD file(s) to register (default: {DEFAULT_CRD})",
    )
    parser.add_argument("--no-keda", action="store_true", help="do not register KEDA's kinds")
    parser.add_argument(
        "--with-redis",
        action="store_true",
        help="also start a local redis-server and print its URL for spec.redis.url",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    crds = args.crd or [DEFAULT_CRD]
    for crd in crds:
        if not crd.is_file():
            parser.error(f"CRD file {crd} not found (run from the repository root or pass --crd)")
    # A short resync so edits and Redis figures show up quickly; set before the handlers load.
    os.environ.setdefault("FACEPIPE_OPERATOR_RESYNC_SECONDS", "10")

    redis_server = None
    if args.with_redis:
        from facepipe.cli.localservers import start_redis

        redis_server = start_redis(args.dir / "redis")
    server = EmulatorServer(crds, port=args.port, keda=not args.no_keda)
    server.start()
    kubeconfig = write_kubeconfig(args.dir / "kubeconfig", server.url).resolve()
    os.environ["KUBECONFIG"] = str(kubeconfig)
    print(f"Kubernetes API emulator: {server.url}", flush=True)
    print(f"kubeconfig: {kubeconfig}", flush=True)
    print(
        f"  kubectl --kubeconfig {args.dir}/kubeconfig apply --validate=false -f examples/facepipeline.yaml",
        flush=True,
    )
    print(
        f"  kubectl --kubeconfig {args.dir}/kubeconfig get facepipelines,deployments,configmaps,hpa",
        flush=True,
    )
    if redis_server is not None:
        print(f"redis: {redis_server.url}  (use it as spec.redis.url)", flush=True)
    print("Ctrl-C stops.", flush=True)

    import kopf

    import facepipe.operator.main  # noqa: F401  (registers the handlers)

    # The emulator has no server-side apply: children by merge patches (facepipe.operator.apply).
    os.environ["FACEPIPE_OPERATOR_APPLY"] = "merge"

    kopf.configure(verbose=args.verbose)
    if not args.verbose:  # one access-log line per API request drowns the operator's own lines
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        kopf.run(standalone=True, clusterwide=True)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if redis_server is not None:
            redis_server.stop()
        kubeconfig.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
