"""The facepipe command: local mode, ingest, search and the runbook's operations.

    facepipe up                                  # everything on this machine, ops-api on :8001
    facepipe ingest photos/ --tenant demo --wait # upload + publish + wait + summary
    facepipe search face.jpg --tenant demo       # who is this, among demo's faces?

Commands that need the pipeline's Redis/S3 find them through a running
``facepipe up`` (its ops-api's GET /local) or, failing that, the environment
(REDIS_URL, MINIO_ENDPOINT, ...). Commands that talk to the ops-api use
``--api`` (default $FACEPIPE_API or http://127.0.0.1:8001) and send
``Authorization: Bearer $OPS_API_TOKEN`` when that is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from facepipe.cli.connect import ApiCallError, ApiUnreachableError, OpsApiClient, Target, default_api, resolve
from facepipe.core.errors import PermanentError, TransientError
from facepipe.core.settings import ConfigError

STAGES = ("detector", "embedder", "indexer")
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


class CliError(RuntimeError):
    """A failure to report in one red line, exit code 1 (2 for usage errors)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _redis(target: Target) -> redis.Redis:
    return redis.Redis.from_url(target.settings.redis_url, socket_timeout=30, socket_connect_timeout=5)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


# --- up / demo / worker ------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from facepipe.cli.up import default_data_dir, run_up

    return run_up(args.data_dir or default_data_dir(), host=args.host, port=args.port, quiet=args.quiet)


def cmd_demo(args: argparse.Namespace) -> int:
    from facepipe.cli.demo import run_demo

    return run_demo(extra_paths=args.paths, keep=args.keep)


def cmd_worker(args: argparse.Namespace) -> int:
    passthrough = (["--once"] if args.once else []) + (
        ["--max-batch", str(args.max_batch)] if args.max_batch else []
    )
    if args.stage != "all":
        # Become the worker (exec): signals reach it directly, its exit code is ours.
        os.execv(sys.executable, [sys.executable, "-m", f"facepipe.{args.stage}", *passthrough])
    if args.once:
        # One batch per stage, in pipeline order: a message published before this runs goes all the way.
        import subprocess

        for stage in STAGES:
            code = subprocess.call([sys.executable, "-m", f"facepipe.{stage}", *passthrough])
            if code != 0:
                err_console.print(f"[red]{stage} --once exited with code {code}[/]")
                return code
        return 0
    from facepipe.cli.supervisor import ChildSpec, Supervisor
    from facepipe.cli.up import default_data_dir

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    specs = [
        ChildSpec(stage, [sys.executable, "-m", f"facepipe.{stage}", *passthrough], env) for stage in STAGES
    ]

    def line(name: str, text: str) -> None:
        console.print(Text(f"{name:>9} | ", style="cyan") + Text(text), soft_wrap=True)

    def event(text: str) -> None:
        console.print(Text(" facepipe | ", style="bold blue") + Text(text))

    return Supervisor(specs, default_data_dir() / "logs", on_event=event, on_line=line).run()


# --- ingest ------------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> int:
    from facepipe.cli import ingest as ing
    from facepipe.store.storage import ObjectStore

    try:
        files = ing.find_images(args.paths)
    except ing.IngestError as exc:
        raise CliError(str(exc), code=2) from None
    if not files:
        raise CliError(f"no images (.jpg .jpeg .png .webp) found in {', '.join(map(str, args.paths))}")
    target = resolve(args.api)
    settings = target.settings
    client = _redis(target)
    store = ObjectStore(settings)
    quiet = args.json
    if not quiet:
        console.print(
            f"Ingesting {len(files)} images for tenant [bold]{args.tenant}[/] into {settings.ingest_stream} "
            f"({target.source})",
            soft_wrap=True,
        )
    baseline = ing.take_baseline(settings, client, args.tenant) if args.wait else None
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    ) as progress:
        task = progress.add_task("upload + publish", total=len(files))
        result = ing.ingest_paths(
            settings,
            client,
            store,
            files,
            args.tenant,
            site=args.site,
            on_done=lambda _p: progress.advance(task),
        )
    for skipped in result.skipped:
        err_console.print(f"[yellow]skipped[/] {skipped.path}: {skipped.reason}")
    if not args.wait:
        if quiet:
            _print_json(
                {
                    "tenant_id": args.tenant,
                    "images": len(result.published),
                    "skipped_files": len(result.skipped),
                    "messages": [
                        {"path": str(p.path), "image_sha256": p.sha256, "id": p.message_id}
                        for p in result.published
                    ],
                }
            )
        else:
            console.print(
                f"Published {len(result.published)} messages to '{settings.ingest_stream}'. "
                "Add --wait to follow them through the pipeline."
            )
        return 0
    assert baseline is not None
    total = max(1, ing.outstanding(settings, client))
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    ) as progress:
        task = progress.add_task("processing (messages in the pipeline)", total=total)

        def on_progress(left: int) -> None:
            nonlocal total
            total = max(total, left)
            progress.update(
                task,
                total=total,
                completed=total - left,
                description=f"processing: {left} messages in the pipeline",
            )

        drained = ing.wait_drained(settings, client, args.timeout, on_progress)
    summary = ing.summarize(settings, client, baseline, result)
    summary["drained"] = drained
    if quiet:
        _print_json(summary)
    else:
        table = Table(title="ingest summary", show_header=False)
        table.add_row("tenant", args.tenant)
        for key in (
            "images",
            "faces_processed",
            "faces_rejected",
            "faces_dup_skipped",
            "dlq",
            "skipped_files",
        ):
            table.add_row(key.replace("_", " "), str(summary[key]))
        console.print(table)
        for entry in summary["dlq_entries"]:
            console.print(
                f"[red]DLQ[/] {entry['stream']} {entry['id']}: {entry['reason']} "
                f"(image {entry['image_sha256'][:12]})  → facepipe dlq list"
            )
    if not drained:
        raise CliError(
            f"the pipeline did not drain within {args.timeout:.0f}s: are the workers running "
            "(`facepipe up`, or `make worker`)? Counts above are partial."
        )
    return 0


# --- search / stats / ready ----------------------------------------------------------------


def _api(args: argparse.Namespace) -> OpsApiClient:
    return OpsApiClient(args.api)


def cmd_search(args: argparse.Namespace) -> int:
    path: Path = args.image
    if not path.is_file():
        raise CliError(f"{path}: no such file", code=2)
    with path.open("rb") as handle:
        body = _api(args).json(
            "POST",
            "/search",
            files={"image": (path.name, handle)},
            data={"tenant_id": args.tenant, "top_k": str(args.top_k)},
        )
    if args.json:
        _print_json(body)
        return 0
    if not body["faces"]:
        console.print(f"No face found in {path}.")
        return 0
    for face in body["faces"]:
        bbox = ", ".join(f"{v:.0f}" for v in face["bbox"])
        table = Table(title=f"query face {face['index']} (bbox {bbox}) — tenant {body['tenant_id']}")
        for column in ("score", "image_sha256", "face", "site", "url"):
            table.add_column(column, overflow="fold")
        for match in face["matches"]:
            table.add_row(
                f"{match['score']:.3f}",
                (match["image_sha256"] or "")[:16],
                str(match["face_index"]),
                match["site"],
                _short_url(match["url"]),
            )
        if not face["matches"]:
            table.add_row("-", "no indexed faces for this tenant", "", "", "")
        console.print(table)
    return 0


def _short_url(url: str) -> str:
    """A local file's name (its folder is the same for the whole ingest); other URLs in full."""
    return url.rsplit("/", 1)[-1] if url.startswith("file://") else url


def cmd_stats(args: argparse.Namespace) -> int:
    params = {"tenant_id": args.tenant} if args.tenant else None
    body = _api(args).json("GET", "/stats", params=params)
    if args.json:
        _print_json(body)
        return 0
    table = Table(title="counters" + (f" (tenant {args.tenant})" if args.tenant else ""), show_header=False)
    for name, value in body["counters"].items():
        table.add_row(name, str(value))
    console.print(table)
    timings = Table(title="timings (ms)")
    for column in ("stage", "count", "total", "avg"):
        timings.add_column(column)
    for name, t in body["timings_ms"].items():
        timings.add_row(name, str(t["count"]), f"{t['total']:.1f}", f"{t['avg']:.1f}")
    console.print(timings)
    streams = Table(title="streams")
    for column in ("stream", "length", "lag", "pending", "dlq"):
        streams.add_column(column)
    for name, depth in body["streams"].items():
        groups = depth["groups"] or [{"lag": depth["length"], "pending": 0}]
        streams.add_row(
            name,
            str(depth["length"]),
            str(sum(g["lag"] for g in groups)),
            str(sum(g["pending"] for g in groups)),
            str(depth["dlq_length"]),
        )
    console.print(streams)
    console.print(f"dedup: {body['dedup_stats']}")
    return 0


def cmd_ready(args: argparse.Namespace) -> int:
    response = _api(args).request("GET", "/ready")
    body = response.json()
    if args.json:
        _print_json(body)
    else:
        for name, state in body["checks"].items():
            style = "green" if state == "healthy" else "red"
            detail = body.get("errors", {}).get(name, "")
            console.print(Text(f"{name:<12} ", style="bold") + Text(state, style=style) + Text(f"  {detail}"))
        console.print(f"provider: {body.get('provider')}   model pack: {body.get('model_pack')}")
    return 0 if response.status_code == 200 else 1


# --- runbook operations ------------------------------------------------------------------


def cmd_publish_test(args: argparse.Namespace) -> int:
    from facepipe.cli.ingest import build_message, publish, raw_key
    from facepipe.cli.samples import insightface_t1
    from facepipe.store.storage import ObjectStore

    target = resolve(args.api)
    settings = target.settings
    client = _redis(target)
    if args.runbook_payload:
        # The runbook's literal example: its image does not exist, so it ends in the DLQ (object_not_found).
        payload = {
            "image_sha256": "abc123def456",
            "bucket": settings.bucket_raw,
            "key": "demo/test_image.jpg",
            "tenant_id": args.tenant,
            "site": "local",
            "url": "http://example.com/test.jpg",
            "image_phash": "8f373c9c3c9c3c1e",
            "face_hints": None,
        }
    else:
        path = insightface_t1()
        data = path.read_bytes()
        store = ObjectStore(settings)
        store.ensure_buckets()
        sha, payload = build_message(settings, args.tenant, "local", path, data)
        payload["url"] = "http://example.com/test.jpg"
        store.put_bytes(settings.bucket_raw, raw_key(args.tenant, sha, path.suffix), data, "image/jpeg")
    message_id = publish(client, settings.ingest_stream, payload)
    print(f"✅ Published test message to stream '{settings.ingest_stream}'")
    print(f"   Message ID: {message_id}")
    print("   Field: message")
    print(f"   Payload: {json.dumps(payload)}")
    return 0


def cmd_ensure(args: argparse.Namespace) -> int:
    from facepipe.core.worker import ensure_group
    from facepipe.store.storage import ObjectStore

    target = resolve(args.api)
    settings = target.settings
    client = _redis(target)
    for stream in settings.pipeline_streams:
        state = "created" if ensure_group(client, stream, settings.redis_group_name) else "exists"
        console.print(f"consumer group {settings.redis_group_name} on {stream}: {state}")
    if target.local and settings.qdrant_embedded:
        # Embedded Qdrant admits one process; the running stack holds it (its indexer makes the collection).
        created = ObjectStore(settings).ensure_buckets()
        console.print(
            f"buckets: {', '.join(ObjectStore(settings).buckets)} "
            f"({'created ' + ', '.join(created) if created else 'all exist'})"
        )
        console.print("Qdrant collection: held by the running `facepipe up` (its indexer creates it)")
        return 0
    from facepipe.store.ensure import ensure_storage_and_collection

    report = ensure_storage_and_collection(settings)
    console.print(
        f"buckets: {', '.join(report.buckets)} "
        f"({'created ' + ', '.join(report.buckets_created) if report.buckets_created else 'all exist'})"
    )
    console.print(
        f"Qdrant collection {report.collection} ({report.dim}-d): "
        f"{'created' if report.collection_created else 'exists'}"
    )
    return 0


def cmd_dedup_flush(args: argparse.Namespace) -> int:
    from facepipe.store.dedup import DedupCache

    target = resolve(args.api)
    deleted = DedupCache(_redis(target), target.settings).flush(args.tenant)
    scope = f"tenant {args.tenant}" if args.tenant else "all tenants"
    console.print(f"Flushed {deleted} dedup keys ({scope})")
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    api = _api(args)
    if args.dlq_command == "list":
        params: dict[str, Any] = {"count": args.count}
        if args.stream:
            params["stream"] = args.stream
        body = api.json("GET", "/dlq", params=params)
        if args.json:
            _print_json(body)
            return 0
        title = "dead-letter queues: " + ", ".join(f"{k}:dlq {v}" for k, v in body["lengths"].items())
        console.print(title, soft_wrap=True)
        for entry in body["entries"]:
            console.print(
                Text(entry["id"], style="bold")
                + Text(f"  {entry['dlq']}  ")
                + Text(entry["reason"], style="red")
                + Text(f"  deliveries={entry['delivery_count']}  source id {entry['source_id']}"),
                soft_wrap=True,
            )
            console.print(Text(f"    {entry['error'][:300]}"), soft_wrap=True)
        if not body["entries"]:
            console.print("(empty)")
        return 0
    if not args.all and not args.ids:
        raise CliError("give DLQ entry ids (--id ID, repeatable) or --all", code=2)
    # Without --stream: every pipeline stream the ops-api knows (an id lives in exactly one DLQ).
    streams = [args.stream] if args.stream else list(api.json("GET", "/dlq", params={"count": 1})["lengths"])
    replayed: dict[str, str] = {}
    missing: set[str] = set(args.ids)
    for stream in streams:
        body = api.json(
            "POST",
            "/dlq/replay",
            json={"stream": stream, "ids": None if args.all else args.ids, "all": args.all},
        )
        replayed.update(body["replayed"])
        missing -= set(body["replayed"])
    summary = {"replayed": replayed, "missing": sorted(missing), "count": len(replayed)}
    if args.json:
        _print_json(summary)
    else:
        console.print(
            f"Replayed {len(replayed)} entries to their source streams"
            + (f"; not found: {', '.join(sorted(missing))}" if missing else ""),
            soft_wrap=True,
        )
    return 0 if not missing else 1


def cmd_delete(args: argparse.Namespace) -> int:
    api = _api(args)
    if args.delete_command == "image":
        body = api.json("DELETE", f"/images/{args.image_sha256}", params={"tenant_id": args.tenant})
    else:
        if not args.yes:
            raise CliError(
                f"this deletes every face, artifact and dedup entry of tenant {args.tenant}: "
                "add --yes to confirm",
                code=2,
            )
        body = api.json("DELETE", f"/tenants/{args.tenant}")
    if args.json:
        _print_json(body)
    else:
        console.print("Deleted: " + ", ".join(f"{k}={v}" for k, v in body.items()), soft_wrap=True)
    return 0


# --- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facepipe",
        description=__doc__.split("\n\n")[0],
        epilog="Run `facepipe COMMAND -h` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def api_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--api", default=None, help=f"ops-api URL (default $FACEPIPE_API or {default_api()})")

    p = sub.add_parser("up", help="run the whole pipeline locally (Redis, S3, Qdrant, services, ops-api)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where data persists (default $FACEPIPE_DATA_DIR or ./.facepipe)",
    )
    p.add_argument("--port", type=int, default=8001, help="ops-api port (default 8001)")
    p.add_argument("--host", default="127.0.0.1", help="ops-api interface (default 127.0.0.1)")
    p.add_argument(
        "-q", "--quiet", action="store_true", help="do not echo the services' logs (see DATA_DIR/logs)"
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("ingest", help="upload images (files or folders) and publish them to the pipeline")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--tenant", required=True, help="tenant id the images belong to")
    p.add_argument("--site", default="local", help="the images' source site (default: local)")
    p.add_argument("--wait", action="store_true", help="wait until every image is processed, then summarize")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits at most (default 600)")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    api_option(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("search", help="find a photo's faces among a tenant's indexed faces")
    p.add_argument("image", type=Path)
    p.add_argument("--tenant", required=True)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    api_option(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("stats", help="counters, timings, stream depth (GET /stats)")
    p.add_argument("--tenant", default=None)
    p.add_argument("--json", action="store_true")
    api_option(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("ready", help="readiness checks (GET /ready); exit 1 when not ready")
    p.add_argument("--json", action="store_true")
    api_option(p)
    p.set_defaults(func=cmd_ready)

    p = sub.add_parser("publish-test", help="publish the runbook's test message (with a real sample image)")
    p.add_argument("--tenant", default="demo")
    p.add_argument(
        "--runbook-payload",
        action="store_true",
        help="publish the runbook's literal example (its image does not exist: it lands in the DLQ)",
    )
    api_option(p)
    p.set_defaults(func=cmd_publish_test)

    p = sub.add_parser("ensure", help="create buckets, consumer groups and the Qdrant collection")
    api_option(p)
    p.set_defaults(func=cmd_ensure)

    p = sub.add_parser("dedup-flush", help="delete the dedup cache (all tenants, or one)")
    p.add_argument("--tenant", default=None)
    api_option(p)
    p.set_defaults(func=cmd_dedup_flush)

    p = sub.add_parser("dlq", help="list or replay dead-letter queue entries")
    dlq_sub = p.add_subparsers(dest="dlq_command", required=True, metavar="list|replay")
    q = dlq_sub.add_parser("list", help="entries of the DLQs (oldest first)")
    q.add_argument("--stream", default=None, help="one pipeline stream (default: all)")
    q.add_argument("--count", type=int, default=100)
    q.add_argument("--json", action="store_true")
    api_option(q)
    q = dlq_sub.add_parser("replay", help="re-publish entries to their source stream")
    q.add_argument(
        "--stream", default=None, help="pipeline stream whose DLQ to replay (default: every stream)"
    )
    q.add_argument("--id", dest="ids", action="append", default=[], help="entry id (repeatable)")
    q.add_argument("--all", action="store_true", help="every entry of that DLQ")
    q.add_argument("--json", action="store_true")
    api_option(q)
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("delete", help="GDPR deletion of one image or a whole tenant")
    del_sub = p.add_subparsers(dest="delete_command", required=True, metavar="image|tenant")
    q = del_sub.add_parser("image", help="one image's faces, artifacts and dedup entries")
    q.add_argument("image_sha256")
    q.add_argument("--tenant", required=True)
    q.add_argument("--json", action="store_true")
    api_option(q)
    q = del_sub.add_parser("tenant", help="everything of one tenant")
    q.add_argument("tenant")
    q.add_argument("--yes", action="store_true", help="confirm")
    q.add_argument("--json", action="store_true")
    api_option(q)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("worker", help="run a pipeline stage (or all three) against REDIS_URL etc.")
    p.add_argument("stage", choices=[*STAGES, "all"])
    p.add_argument("--once", action="store_true", help="one batch, then exit (all: each stage in turn)")
    p.add_argument("--max-batch", type=int, default=None, metavar="N")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("demo", help="start a throw-away local stack, ingest sample faces, search, stop")
    p.add_argument("paths", nargs="*", type=Path, help="extra photos or folders to ingest")
    p.add_argument("--keep", action="store_true", help="keep the stack's data dir")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        err_console.print(Text(f"facepipe {args.command}: {exc}", style="bold red"), soft_wrap=True)
        return exc.code
    except (ApiUnreachableError, ApiCallError, ConfigError) as exc:
        err_console.print(Text(f"facepipe {args.command}: {exc}", style="bold red"), soft_wrap=True)
        return 1
    except PermanentError as exc:
        err_console.print(Text(f"facepipe {args.command}: {exc.message}", style="bold red"), soft_wrap=True)
        return 2
    except (TransientError, redis.ConnectionError, redis.TimeoutError) as exc:
        err_console.print(
            Text(
                f"facepipe {args.command}: cannot reach the pipeline: {exc}. "
                "Is `facepipe up` running (or REDIS_URL/MINIO_ENDPOINT set)?",
                style="bold red",
            ),
            soft_wrap=True,
        )
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
