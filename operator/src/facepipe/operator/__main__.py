"""``python -m facepipe.operator``: run the Kopf operator (handlers from facepipe.operator.main)."""

from __future__ import annotations

import argparse

import kopf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m facepipe.operator", description=__doc__)
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="serve only this namespace (repeatable; globs allowed); default: all",
    )
    parser.add_argument(
        "--peering",
        default=None,
        help="Kopf peering object name for several operator replicas (default: standalone)",
    )
    parser.add_argument(
        "--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    import facepipe.operator.main  # noqa: F401  (registers the handlers)
    from facepipe.operator.handlers.runtime import RUNTIME

    RUNTIME.watch_namespaces = tuple(args.namespace)

    kopf.configure(verbose=args.verbose, debug=args.debug)
    kopf.run(
        standalone=args.peering is None,
        peering_name=args.peering,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )


if __name__ == "__main__":
    main()
