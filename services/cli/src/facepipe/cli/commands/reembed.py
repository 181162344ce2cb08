"""``facepipe reembed --tenant T --pack P``: move a tenant's searches to another model pack.

Every stored face of the tenant is embedded again from its crop in S3 with pack P, into P's
collection; when all are there the tenant's searches switch to it in one step (until then
they keep answering from the old collection). Run it after restarting the pipeline with
``MODEL_PACK=P``, so new images go to P's collection meanwhile. Killed, it resumes where it
stopped when run again; for the pack the tenant already uses, it rolls back an unfinished
migration to another one.

Where it runs: against a ``facepipe up`` stack with the embedded vector store, inside the
stack's ops-api process (the only process that may open the store: ``POST /migrations``);
otherwise in this process, with the pipeline's settings from the environment (the same
code as the operator's Job, ``python -m facepipe.ops_api.reembed``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from facepipe.cli.commands.common import Subparsers, add_api_option
from facepipe.cli.connect import OpsApiClient, Target, resolve
from facepipe.cli.output import CliError, console

POLL_S = 0.5


def add_parser(sub: Subparsers) -> None:
    from facepipe.ops_api.reembed.options import add_options

    p = sub.add_parser("reembed", help="re-embed a tenant's faces with another model pack and switch to it")
    add_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_api_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facepipe.ops_api.reembed.options import options_of

    target = resolve(args.api)
    pack = args.pack or target.settings.model_pack
    try:
        options = options_of(args)
    except ValueError as exc:
        raise CliError(str(exc), code=2) from None
    if _stack_holds_the_store(target):
        return _through_the_stack(target, args, pack)
    return _here(target, args, pack, options)


def _stack_holds_the_store(target: Target) -> bool:
    return bool(target.local) and str(target.local.get("qdrant", "")).startswith("embedded")  # type: ignore[union-attr]


# --- inside the running stack ----------------------------------------------------------------------


def _through_the_stack(target: Target, args: argparse.Namespace, pack: str) -> int:
    client = OpsApiClient(target.api)
    try:
        if args.cleanup:
            body = client.json("POST", f"/migrations/{args.tenant}/cleanup")
            _cleaned(args.tenant, body["removed_from"])
            return 0
        request = {
            "pack": pack, "max_faces_per_s": args.max_faces_per_s, "retain_hours": args.retain_hours,
            "settle_s": args.settle_s, "batch": args.batch,
        }
        response = client.request("POST", f"/migrations/{args.tenant}", json=request)
        if response.status_code not in (202, 409):  # 409: one is running already: follow it
            client.json("POST", f"/migrations/{args.tenant}", ok=(202,), json=request)
        console.print(f"backfill of tenant {args.tenant} to {pack} runs in the stack at {target.api}")
        with _bar(args.quiet) as (progress, task):
            while True:
                state = client.json("GET", f"/migrations/{args.tenant}")
                record = state.get("record") or {}
                _show(progress, task, record)
                if not state["running_here"]:
                    break
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        console.print(f"the backfill goes on in the stack; `facepipe reembed --tenant {args.tenant}` follows")
        return 130
    finally:
        client.close()
    if state.get("error_here"):
        raise CliError(f"backfill of tenant {args.tenant} failed: {state['error_here']}")
    _summary(args.tenant, pack, state["pack"], record)
    return 0


# --- in this process ---------------------------------------------------------------------------------


def _here(target: Target, args: argparse.Namespace, pack: str, options: Any) -> int:
    from facepipe.ops_api.reembed.backfill import Reembedder, opened
    from facepipe.store.pack_migration import MigrationState
    from facepipe.store.vectors import StoreInUseError

    settings = target.settings
    try:
        with opened(settings) as (index, store, client), _bar(args.quiet) as (progress, task):
            reembedder = Reembedder(
                settings, args.tenant, pack, index=index, store=store, redis_client=client, options=options,
                progress=lambda state: _show(progress, task, state.as_json()),
            )
            if args.cleanup:
                _cleaned(args.tenant, [kept.collection for kept in reembedder.clean_up()])
                return 0
            report = reembedder.run()
            record = (reembedder.records.load(args.tenant) or MigrationState(args.tenant)).as_json()
    except StoreInUseError as exc:
        raise CliError(str(exc)) from None
    except (RuntimeError, FileNotFoundError) as exc:
        raise CliError(f"backfill of tenant {args.tenant} failed: {exc}") from None
    _summary(args.tenant, pack, report.pack, {**record, "faces_per_s": round(report.faces_per_s, 1)})
    return 0


# --- output -------------------------------------------------------------------------------------------


@contextmanager
def _bar(quiet: bool) -> Iterator[tuple[Progress, TaskID]]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("faces"))
    with Progress(*columns, console=console, disable=quiet) as progress:
        yield progress, progress.add_task("starting", total=None)


def _show(progress: Progress, task: TaskID, record: dict[str, Any]) -> None:
    if not record:
        return
    total = max(int(record.get("total") or 0), int(record.get("migrated") or 0))
    phase = record.get("phase") or "starting"
    description = f"{phase} to {record.get('target_pack') or record.get('active_pack')}"
    progress.update(task, description=description, total=total or None, completed=record.get("migrated") or 0)


def _summary(tenant: str, pack: str, searched: str | None, record: dict[str, Any]) -> None:
    if searched != pack:
        reason = record.get("error") or "see the logs"
        raise CliError(f"tenant {tenant} still searches with {searched}: {reason}")
    kept = ", ".join(f"{r['collection']} until {r['until']}" for r in record.get("previous") or []) or "none"
    console.print(
        f"tenant {tenant} searches with {pack}: {record.get('migrated', 0)} faces "
        f"({record.get('faces_per_s', 0)} faces/s, {record.get('skipped', 0)} without a crop); "
        f"kept for rollback: {kept}"
    )


def _cleaned(tenant: str, collections: list[str]) -> None:
    console.print(f"tenant {tenant}: faces kept for rollback removed from {', '.join(collections) or '-'}")
