"""``python -m facepipe.ops_api.reembed --tenant T --pack P``: make tenant T search with pack P.

What the operator's backfill Job runs (the ops-api image: models, S3 and the vector store
in one), with the pipeline's own environment (REDIS_URL, MINIO_*, QDRANT_*, MODELS_DIR).
Progress goes to the log (and to the tenant's record in Redis, which the operator shows);
a run that is killed resumes where it stopped when started again. ``--cleanup`` removes the
tenant's faces from the collections kept for rollback now, instead of at their deadline.
Exit status: 0 done, 1 failed (the reason on one line), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from facepipe.core.logs import setup_logging
from facepipe.core.settings import ConfigError, load_settings
from facepipe.core.tenancy import is_valid_tenant_id
from facepipe.ops_api.reembed.backfill import Reembedder, opened
from facepipe.ops_api.reembed.options import add_options, options_of
from facepipe.store.pack_migration import MigrationState

log = logging.getLogger("facepipe.reembed")
LOG_EVERY_S = 10.0


def parser(prog: str = "python -m facepipe.ops_api.reembed") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_options(p)
    return p


class ProgressLog:
    """Progress as log lines: at most one every LOG_EVERY_S, and every phase change."""

    def __init__(self) -> None:
        self._last = 0.0
        self._phase = ""

    def __call__(self, state: MigrationState) -> None:
        now = time.monotonic()
        if state.phase == self._phase and now - self._last < LOG_EVERY_S:
            return
        self._last, self._phase = now, state.phase
        log.info(
            "tenant %s: %s, %d of %d faces in pack %s's collection (%.1f faces/s, %d without a crop)",
            state.tenant,
            state.phase or "-",
            state.migrated,
            state.total,
            state.target or state.active,
            state.faces_per_s,
            state.skipped,
        )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not is_valid_tenant_id(args.tenant):
        print(f"reembed: --tenant {args.tenant!r} is not a valid tenant id", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
        options = options_of(args)
    except (ConfigError, ValueError) as exc:
        print(f"reembed: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    pack = args.pack or settings.model_pack
    try:
        with opened(settings) as (index, store, client):
            reembedder = Reembedder(
                settings,
                args.tenant,
                pack,
                index=index,
                store=store,
                redis_client=client,
                options=options,
                progress=ProgressLog(),
            )
            if args.cleanup:
                gone = reembedder.clean_up()
                removed = ", ".join(kept.collection for kept in gone) or "nothing"
                log.info("tenant %s: removed from %s", args.tenant, removed)
                return 0
            report = reembedder.run()
    except Exception as exc:
        log.error("reembed of tenant %s to %s failed: %s: %s", args.tenant, pack, type(exc).__name__, exc)
        return 1
    log.info(
        "tenant %s %s pack %s: %d faces in its collection, %d embedded now (%.1f faces/s), %d without a crop",
        report.tenant,
        report.action,
        report.pack,
        report.migrated,
        report.embedded,
        report.faces_per_s,
        report.skipped,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
