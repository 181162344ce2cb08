"""Generate the face-pipeline Grafana dashboards.

The JSON lives in charts/face-pipeline-operator/dashboards/ (the chart ships each file as a
ConfigMap for the Grafana sidecar). Edit this file, never the JSON, then run

    .venv/bin/python dashboards/generate.py          # write the JSON
    .venv/bin/python dashboards/generate.py --check  # exit 1 if the JSON is stale

Every metric name used here must appear on the services' /metrics (tests/charts checks it
against a live scrape); kube-state-metrics series are the one documented exception.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTPUT_DIR = Path(__file__).resolve().parents[1] / "charts" / "face-pipeline-operator" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Every face-pipeline series carries namespace and tenant (scrape relabelling in the chart).
SEL = 'namespace=~"$namespace", tenant=~"$tenant"'
RATE = "$__rate_interval"
QUANTILES = (0.5, 0.95, 0.99)
ONLY_DETECTOR = 'stage="detector"'
ONLY_INDEXER = 'stage="indexer"'
# Messages a stage finished either way: acked or dead-lettered (one selector, so a stage that
# never dead-lettered still has a value).
FINISHED = '{__name__=~"facepipe_worker_msgs_acked_total|facepipe_worker_msgs_dlq_total"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    width: int = 12
    height: int = 8
    stacked: bool = False
    min_zero: bool = True
    thresholds: tuple[tuple[str, float | None], ...] = ()


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    tags: tuple[str, ...] = ("face-pipeline",)
    links_to: tuple[str, ...] = field(default_factory=tuple)


def rate(metric: str, extra: str = "") -> str:
    """rate() over the dashboard's namespace/tenant selection; `metric` may open a selector."""
    selector = f"{SEL}, {extra}" if extra else SEL
    if metric.startswith("{"):
        return f"rate({metric}, {selector}}}[{RATE}])"
    return f"rate({metric}{{{selector}}}[{RATE}])"


def quantile_queries(histogram: str, by: str) -> tuple[Query, ...]:
    """p50/p95/p99 of a histogram per `by` label (and tenant, so "All" tenants stay apart)."""
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by (le, tenant, {by}) ({rate(histogram + '_bucket')}))",
            f"{{{{tenant}}}} {{{{{by}}}}} p{round(q * 100)}",
        )
        for q in QUANTILES
    )


def backlog_expr(by: str) -> str:
    """lag + pending per stream, each counted once across ops-api replicas (as the HPA sees it)."""
    return (
        f"sum by ({by}) (max by (__name__, namespace, {by}, group) "
        f'({{__name__=~"facepipe_stream_lag|facepipe_stream_pending", {SEL}}}))'
    )


# Replicas per component from kube-state-metrics; tenant and component come from the
# Deployment's labels (kube-state-metrics --metric-labels-allowlist, see docs/readme/alerts.md).
def deployment_replicas(metric: str) -> str:
    return (
        "sum by (tenant, component) (label_replace(label_replace("
        f"{metric} * on (namespace, deployment) group_left (label_facepipe_io_tenant, "
        "label_app_kubernetes_io_component) "
        'kube_deployment_labels{namespace=~"$namespace", label_facepipe_io_tenant=~"$tenant"}, '
        '"tenant", "$1", "label_facepipe_io_tenant", "(.+)"), '
        '"component", "$1", "label_app_kubernetes_io_component", "(.+)"))'
    )


OVERVIEW = Dashboard(
    uid="facepipe-overview",
    title="Face pipeline / Overview",
    description="Throughput, latency, dedup, rejected faces and replicas of every face-pipeline stage.",
    links_to=("facepipe-queues",),
    rows=(
        Row(
            "Throughput",
            (
                Panel(
                    "Messages acked per second by stage",
                    "Messages each stage finished and acked (its output durably published).",
                    (
                        Query(
                            f"sum by (tenant, stage) ({rate('facepipe_worker_msgs_acked_total')})",
                            "{{tenant}} {{stage}}",
                        ),
                    ),
                    unit="short",
                ),
                Panel(
                    "Faces per second by stage",
                    "Faces each stage handled: detected and accepted, embedded, indexed.",
                    (
                        Query(
                            f"sum by (tenant, stage) ({rate('facepipe_faces_processed_total')})",
                            "{{tenant}} {{stage}}",
                        ),
                    ),
                ),
                Panel(
                    "Ingest rate",
                    "Images per second the detector finished (acked or dead-lettered).",
                    (Query(f"sum by (tenant) ({rate(FINISHED, ONLY_DETECTOR)})", "{{tenant}}"),),
                    kind="stat",
                    width=6,
                    height=6,
                ),
                Panel(
                    "Messages in flight by stage",
                    "Messages a worker holds right now (read, not yet acked).",
                    (
                        Query(
                            f"sum by (tenant, stage) (facepipe_worker_inflight_messages{{{SEL}}})",
                            "{{tenant}} {{stage}}",
                        ),
                    ),
                    width=18,
                    height=6,
                ),
            ),
        ),
        Row(
            "Latency",
            (
                Panel(
                    "Message latency per stage (p50 / p95 / p99)",
                    "Time from reading a message to acking it, per stage.",
                    quantile_queries("facepipe_message_duration_seconds", "stage"),
                    unit="s",
                ),
                Panel(
                    "Step latency (p50 / p95 / p99)",
                    "The runbook's timings: detection (per image), embedding (per batch), storage "
                    "(per artifact), upsert (per batch).",
                    quantile_queries("facepipe_stage_duration_seconds", "stage"),
                    unit="s",
                ),
                Panel(
                    "Mean time per message by stage",
                    "Histogram sum over count: the figure the SlowProcessing alert watches (1 s).",
                    (
                        Query(
                            f"sum by (tenant, stage) ({rate('facepipe_message_duration_seconds_sum')})"
                            f" / sum by (tenant, stage) ({rate('facepipe_message_duration_seconds_count')})",
                            "{{tenant}} {{stage}}",
                        ),
                    ),
                    unit="s",
                    thresholds=(("green", None), ("red", 1.0)),
                ),
                Panel(
                    "Embedder batch size",
                    "Faces per inference call (mean and p95): batching across messages at work.",
                    (
                        Query(
                            f"sum by (tenant) ({rate('facepipe_embed_batch_size_sum')})"
                            f" / sum by (tenant) ({rate('facepipe_embed_batch_size_count')})",
                            "{{tenant}} mean",
                        ),
                        Query(
                            "histogram_quantile(0.95, sum by (le, tenant) "
                            f"({rate('facepipe_embed_batch_size_bucket')}))",
                            "{{tenant}} p95",
                        ),
                    ),
                ),
            ),
        ),
        Row(
            "Faces",
            (
                Panel(
                    "Dedup hit rate",
                    "Near-duplicate faces skipped over faces that reached the dedup decision "
                    "(skipped + indexed).",
                    (
                        Query(
                            f"sum by (tenant) ({rate('facepipe_faces_dup_skipped_total')}) / "
                            f"(sum by (tenant) ({rate('facepipe_faces_dup_skipped_total')}) + "
                            f"sum by (tenant) ({rate('facepipe_faces_processed_total', ONLY_INDEXER)}))",
                            "{{tenant}}",
                        ),
                    ),
                    unit="percentunit",
                ),
                Panel(
                    "Faces rejected by reason",
                    "Faces the quality gates turned down, per reason (size, score, blur, pose...).",
                    (
                        Query(
                            f"sum by (tenant, reason) ({rate('facepipe_faces_rejected_total')})",
                            "{{tenant}} {{reason}}",
                        ),
                    ),
                    stacked=True,
                ),
                Panel(
                    "Dedup cache keys",
                    "Keys under dedup: in Redis (entries expire after DEDUP_TTL_SECONDS).",
                    (Query(f"max by (tenant) (facepipe_dedup_keys{{{SEL}}})", "{{tenant}}"),),
                ),
                Panel(
                    "Dedup cache memory",
                    "Redis memory used by the dedup keys.",
                    (Query(f"max by (tenant) (facepipe_dedup_memory_bytes{{{SEL}}})", "{{tenant}}"),),
                    unit="bytes",
                ),
            ),
        ),
        Row(
            "Replicas and readiness",
            (
                Panel(
                    "Replicas per component",
                    "Current and desired replicas of each Deployment (kube-state-metrics).",
                    (
                        Query(
                            deployment_replicas("kube_deployment_status_replicas"), "{{tenant}} {{component}}"
                        ),
                        Query(
                            deployment_replicas("kube_deployment_spec_replicas"),
                            "{{tenant}} {{component}} desired",
                        ),
                    ),
                ),
                Panel(
                    "Available replicas per component",
                    "Replicas passing readiness; the ComponentNotReady alert fires below desired.",
                    (
                        Query(
                            deployment_replicas("kube_deployment_status_replicas_available"),
                            "{{tenant}} {{component}}",
                        ),
                    ),
                ),
                Panel(
                    "Readiness checks",
                    "ops-api /ready per check: 1 healthy, 0 unhealthy (worst replica).",
                    (Query(f"min by (tenant, check) (facepipe_ready{{{SEL}}})", "{{tenant}} {{check}}"),),
                    kind="stat",
                    width=24,
                    height=5,
                    thresholds=(("red", None), ("green", 1.0)),
                ),
            ),
        ),
    ),
)

QUEUES = Dashboard(
    uid="facepipe-queues",
    title="Face pipeline / Queues and DLQ",
    description="Redis stream depth per stream and consumer group, dead-letter streams, retries.",
    links_to=("facepipe-overview",),
    rows=(
        Row(
            "Queue depth",
            (
                Panel(
                    "Backlog (lag + pending) per stream",
                    "Messages the group has not finished: what the autoscalers scale on and the "
                    "QueueBacklog alert watches (1000).",
                    (Query(backlog_expr("tenant, stream"), "{{tenant}} {{stream}}"),),
                    thresholds=(("green", None), ("red", 1000.0)),
                ),
                Panel(
                    "Stream length",
                    "XLEN: entries kept in each stream, processed or not.",
                    (
                        Query(
                            f"max by (tenant, stream) (facepipe_stream_length{{{SEL}}})",
                            "{{tenant}} {{stream}}",
                        ),
                    ),
                ),
                Panel(
                    "Consumer-group lag",
                    "Entries never delivered to the group.",
                    (
                        Query(
                            f"max by (tenant, stream, group) (facepipe_stream_lag{{{SEL}}})",
                            "{{tenant}} {{stream}} / {{group}}",
                        ),
                    ),
                ),
                Panel(
                    "Pending entries",
                    "Delivered to a consumer and not yet acked (reclaimed after CLAIM_IDLE_MS).",
                    (
                        Query(
                            f"max by (tenant, stream, group) (facepipe_stream_pending{{{SEL}}})",
                            "{{tenant}} {{stream}} / {{group}}",
                        ),
                    ),
                ),
                Panel(
                    "Consumers per group",
                    "Consumers registered in each group (XINFO GROUPS).",
                    (
                        Query(
                            f"max by (tenant, stream, group) (facepipe_stream_consumers{{{SEL}}})",
                            "{{tenant}} {{stream}} / {{group}}",
                        ),
                    ),
                    width=24,
                    height=6,
                ),
            ),
        ),
        Row(
            "Dead-letter queues",
            (
                Panel(
                    "DLQ length",
                    "Entries in each <stream>:dlq.",
                    (
                        Query(
                            f"max by (tenant, stream) (facepipe_dlq_length{{{SEL}}})", "{{tenant}} {{stream}}"
                        ),
                    ),
                ),
                Panel(
                    "DLQ growth per hour",
                    "Entries added to each dead-letter stream over the last hour.",
                    (
                        Query(
                            f"max by (tenant, stream) (delta(facepipe_dlq_length{{{SEL}}}[1h]))",
                            "{{tenant}} {{stream}}",
                        ),
                    ),
                ),
                Panel(
                    "Messages dead-lettered per second by stage and reason",
                    "The reasons (invalid_json, missing_fields, max_deliveries_exceeded, ...) "
                    "behind the HighDLQRate alert.",
                    (
                        Query(
                            f"sum by (tenant, stage, reason) ({rate('facepipe_worker_msgs_dlq_total')})",
                            "{{tenant}} {{stage}} {{reason}}",
                        ),
                    ),
                    stacked=True,
                ),
                Panel(
                    "DLQ ratio by stage",
                    "Dead-lettered over finished (acked + dead-lettered); HighDLQRate fires over 10%.",
                    (
                        Query(
                            f"sum by (tenant, stage) ({rate('facepipe_worker_msgs_dlq_total')}) / "
                            f"sum by (tenant, stage) ({rate(FINISHED)})",
                            "{{tenant}} {{stage}}",
                        ),
                    ),
                    unit="percentunit",
                    thresholds=(("green", None), ("red", 0.1)),
                ),
            ),
        ),
        Row(
            "Retries",
            (
                Panel(
                    "Transient errors per second by stage",
                    "Redis/S3/Qdrant unreachable: retried with backoff, never dead-lettered.",
                    (
                        Query(
                            f"sum by (tenant, stage) ({rate('facepipe_worker_transient_errors_total')})",
                            "{{tenant}} {{stage}}",
                        ),
                    ),
                ),
                Panel(
                    "Redeliveries per second by stage",
                    "Pending messages reclaimed from a crashed or stuck consumer (XAUTOCLAIM).",
                    (
                        Query(
                            f"sum by (tenant, stage) ({rate('facepipe_worker_redeliveries_total')})",
                            "{{tenant}} {{stage}}",
                        ),
                    ),
                ),
            ),
        ),
    ),
)

DASHBOARDS = (OVERVIEW, QUEUES)


def _variables() -> list[dict[str, Any]]:
    def query_var(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "query": {"query": query, "refId": f"{name}-values"},
            "definition": query,
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
        },
        query_var("namespace", "Namespace", "label_values(facepipe_stream_length, namespace)"),
        query_var(
            "tenant", "Tenant", 'label_values(facepipe_stream_length{namespace=~"$namespace"}, tenant)'
        ),
    ]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    steps = [{"color": color, "value": value} for color, value in panel.thresholds] or [
        {"color": "green", "value": None}
    ]
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "thresholds": {"mode": "absolute", "steps": steps},
        "color": {"mode": "thresholds" if panel.kind == "stat" else "palette-classic"},
    }
    if panel.min_zero:
        defaults["min"] = 0
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": True,
            "stacking": {"mode": "normal" if panel.stacked else "none", "group": "A"},
            "thresholdsStyle": {"mode": "line" if panel.thresholds else "off"},
        }
        options: dict[str, Any] = {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "area",
            "textMode": "auto",
            "orientation": "auto",
        }
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": DATASOURCE,
                "expr": query.expr,
                "legendFormat": query.legend,
                "range": True,
            }
            for index, query in enumerate(panel.queries)
        ],
    }


def build(dashboard: Dashboard) -> dict[str, Any]:
    """The Grafana JSON model of one dashboard, laid out left to right, top to bottom."""
    panels: list[dict[str, Any]] = []
    panel_id = 1
    y = 0
    for row in dashboard.rows:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id += 1
        y += 1
        x = 0
        row_height = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id += 1
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": list(dashboard.tags),
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "title": "Other face-pipeline dashboards",
                "type": "dashboards",
                "tags": list(dashboard.tags),
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
            }
        ]
        if dashboard.links_to
        else [],
        "templating": {"list": _variables()},
        "panels": panels,
    }


def render_all() -> dict[str, str]:
    """File name → JSON text, exactly as written to OUTPUT_DIR."""
    return {f"{d.uid}.json": json.dumps(build(d), indent=2, ensure_ascii=False) + "\n" for d in DASHBOARDS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON on disk is stale")
    args = parser.parse_args(argv)
    rendered = render_all()
    stale = sorted(
        name
        for name, text in rendered.items()
        if not (OUTPUT_DIR / name).exists() or (OUTPUT_DIR / name).read_text() != text
    )
    extra = sorted(p.name for p in OUTPUT_DIR.glob("*.json") if p.name not in rendered)
    if args.check:
        for name in stale + extra:
            print(f"stale: {OUTPUT_DIR / name} (run: python dashboards/generate.py)", file=sys.stderr)
        return 1 if stale or extra else 0
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in extra:
        (OUTPUT_DIR / name).unlink()
    for name, text in rendered.items():
        (OUTPUT_DIR / name).write_text(text)
        print(f"wrote {OUTPUT_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
