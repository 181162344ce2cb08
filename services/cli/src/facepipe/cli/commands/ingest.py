"""``facepipe ingest PATH... --tenant T [--wait]``: upload and publish, optionally follow the
pipeline until it drains and summarize. The work itself is ``facepipe.cli.ingest``; this module
is the command: its options, its progress bars and its output."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from facepipe.cli.commands.common import Subparsers, add_api_option
from facepipe.cli.connect import pipeline_redis, resolve
from facepipe.cli.output import CliError, console, err_console, print_json
from facepipe.core.settings import Settings

if TYPE_CHECKING:
    from facepipe.cli.ingest import IngestResult

SUMMARY_ROWS = ("images", "faces_processed", "faces_rejected", "faces_dup_skipped", "dlq", "skipped_files")


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("ingest", help="upload images (files or folders) and publish them to the pipeline")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--tenant", required=True, help="tenant id the images belong to")
    streams = p.add_mutually_exclusive_group()
    streams.add_argument("--stream", help="ingest stream to publish to (default: REDIS_STREAM_NAME)")
    streams.add_argument(
        "--tenant-stream",
        action="store_true",
        help="publish to the tenant's own stream, face-processing-queue:{TENANT}, as the operator names it",
    )
    p.add_argument("--site", default="local", help="the images' source site (default: local)")
    p.add_argument("--wait", action="store_true", help="wait until every image is processed, then summarize")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits at most (default 600)")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    add_api_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facepipe.cli import ingest as ing

    files = _find_files(args.paths)
    target = resolve(args.api)
    settings = ing.with_ingest_stream(target.settings, args.tenant, args.stream, args.tenant_stream)
    client = pipeline_redis(target)
    quiet = args.json
    if not quiet:
        console.print(
            f"Ingesting {len(files)} images for tenant [bold]{args.tenant}[/] into {settings.ingest_stream} "
            f"({target.source})",
            soft_wrap=True,
        )
    baseline = ing.take_baseline(settings, client, args.tenant) if args.wait else None
    result = _upload_and_publish(settings, client, files, args.tenant, args.site, quiet)
    for skipped in result.skipped:
        err_console.print(f"[yellow]skipped[/] {skipped.path}: {skipped.reason}")
    if baseline is None:
        _report_published(result, settings, quiet)
        return 0
    drained = _wait_drained(settings, client, args.timeout, quiet)
    summary = ing.summarize(settings, client, baseline, result)
    summary["drained"] = drained
    _report_summary(summary, quiet)
    if not drained:
        raise CliError(
            f"the pipeline did not drain within {args.timeout:.0f}s: are the workers running "
            "(`facepipe up`, or `make worker`)? Counts above are partial."
        )
    return 0


def _find_files(paths: list[Path]) -> list[Path]:
    from facepipe.cli.ingest import IngestError, find_images

    try:
        files = find_images(paths)
    except IngestError as exc:
        raise CliError(str(exc), code=2) from None
    if not files:
        raise CliError(f"no images (.jpg .jpeg .png .webp) found in {', '.join(map(str, paths))}")
    return files


def _upload_and_publish(
    settings: Settings, client: redis.Redis, files: list[Path], tenant: str, site: str, quiet: bool
) -> IngestResult:
    from facepipe.cli.ingest import ingest_paths
    from facepipe.store.storage import ObjectStore

    store = ObjectStore(settings)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, disable=quiet, transient=False) as progress:
        task = progress.add_task("upload + publish", total=len(files))
        return ingest_paths(
            settings, client, store, files, tenant, site=site, on_done=lambda _p: progress.advance(task)
        )


def _wait_drained(settings: Settings, client: redis.Redis, timeout_s: float, quiet: bool) -> bool:
    from facepipe.cli.ingest import outstanding, wait_drained

    total = max(1, outstanding(settings, client))
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=quiet) as progress:
        task = progress.add_task("processing (messages in the pipeline)", total=total)
        return wait_drained(settings, client, timeout_s, _drain_progress(progress, task, total))


def _drain_progress(progress: Progress, task: TaskID, total: int) -> Callable[[int], None]:
    """Moves the bar as messages leave the pipeline; the total grows when more arrive (later stages)."""
    most = total

    def on_progress(left: int) -> None:
        nonlocal most
        most = max(most, left)
        progress.update(
            task,
            total=most,
            completed=most - left,
            description=f"processing: {left} messages in the pipeline",
        )

    return on_progress


def _report_published(result: IngestResult, settings: Settings, quiet: bool) -> None:
    if not quiet:
        console.print(
            f"Published {len(result.published)} messages to '{settings.ingest_stream}'. "
            "Add --wait to follow them through the pipeline."
        )
        return
    print_json(
        {
            "tenant_id": result.tenant_id,
            "images": len(result.published),
            "skipped_files": len(result.skipped),
            "messages": [
                {"path": str(p.path), "image_sha256": p.sha256, "id": p.message_id} for p in result.published
            ],
        }
    )


def _report_summary(summary: dict[str, Any], quiet: bool) -> None:
    if quiet:
        print_json(summary)
        return
    table = Table(title="ingest summary", show_header=False)
    table.add_row("tenant", summary["tenant_id"])
    for key in SUMMARY_ROWS:
        table.add_row(key.replace("_", " "), str(summary[key]))
    console.print(table)
    for entry in summary["dlq_entries"]:
        console.print(
            f"[red]DLQ[/] {entry['stream']} {entry['id']}: {entry['reason']} "
            f"(image {entry['image_sha256'][:12]})  → facepipe dlq list"
        )
