"""How a backfill run behaves, and the command-line options that say so (light: no models, no stores).

Shared by ``python -m facepipe.ops_api.reembed`` (the operator's Job) and ``facepipe reembed``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from facepipe.core.packs import PACKS

# Longer than any process trusts an alias it read (ROUTES_TTL_S, 2 s) several times over,
# plus a batch in flight: the wait between the switch and the last catch-up.
SETTLE_S = 10.0
DEFAULT_RETAIN_HOURS = 168.0


@dataclass(frozen=True)
class ReembedOptions:
    page: int = 256  # points read per page (and the most faces held in memory)
    batch: int = 32  # faces per inference call
    max_faces_per_s: float = 0.0  # 0: as fast as it goes; else leave the live pipeline room
    retain_hours: float = DEFAULT_RETAIN_HOURS  # the old collection keeps the tenant's faces this long
    settle_s: float = SETTLE_S
    lock_wait_s: float = 60.0  # a killed run's lock expires within LOCK_TTL_S
    fetch_threads: int = 8


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenant", required=True, help="the tenant to move")
    p.add_argument("--pack", choices=sorted(PACKS), help="the model pack to search with (default MODEL_PACK)")
    p.add_argument("--batch", type=int, default=32, help="faces per inference call (default 32)")
    p.add_argument("--page", type=int, default=256, help="faces read and held at a time (default 256)")
    p.add_argument(
        "--max-faces-per-s",
        type=float,
        default=0.0,
        help="embed at most this many faces per second, leaving the live pipeline room (default: no limit)",
    )
    p.add_argument(
        "--retain-hours",
        type=float,
        default=DEFAULT_RETAIN_HOURS,
        help=f"keep the old pack's faces this long, to change back fast (default {DEFAULT_RETAIN_HOURS:g})",
    )
    p.add_argument(
        "--settle-s",
        type=float,
        default=SETTLE_S,
        help=f"wait after the switch before the last catch-up (default {SETTLE_S:g}, > alias caches)",
    )
    p.add_argument("--cleanup", action="store_true", help="drop the tenant's faces kept for rollback now")


def options_of(args: argparse.Namespace) -> ReembedOptions:
    if min(args.batch, args.page) < 1 or min(args.max_faces_per_s, args.retain_hours, args.settle_s) < 0:
        raise ValueError("--batch and --page must be at least 1; the rates and durations not negative")
    return ReembedOptions(
        page=args.page,
        batch=args.batch,
        max_faces_per_s=args.max_faces_per_s,
        retain_hours=args.retain_hours,
        settle_s=args.settle_s,
    )
