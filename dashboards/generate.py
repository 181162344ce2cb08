"""Generate the face-pipeline Grafana dashboards with grafana-foundation-sdk.

The JSON lives in charts/face-pipeline-operator/dashboards/ (the chart ships each file as a
ConfigMap for the Grafana sidecar). Edit this file (what each dashboard shows) or dashkit.py
(how a panel looks), never the JSON, then run

    .venv/bin/python dashboards/generate.py          # write the JSON (also: make dashboards)
    .venv/bin/python dashboards/generate.py --check  # exit 1 if the JSON is stale

Every metric name used here must appear on the services'
/metrics (tests/charts checks it against a live scrape); kube-state-metrics series are the one
documented exception.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as board
from grafana_foundation_sdk.builders import prometheus

# dashkit.py sits beside this file: importable when run as a script and when loaded by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dashkit import Variable, dashboard, datasource_variable, graph, multi_select, query, single_stat, to_json

OUTPUT_DIR = Path(__file__).resolve().parents[1] / "charts" / "face-pipeline-operator" / "dashboards"
TAGS = ["face-pipeline"]
# Every face-pipeline series carries namespace and tenant (scrape relabelling in the chart).
SEL = 'namespace=~"$namespace", tenant=~"$tenant"'
RATE = "$__rate_interval"
QUANTILES = (0.5, 0.95, 0.99)
ONLY_DETECTOR = 'stage="detector"'
ONLY_INDEXER = 'stage="indexer"'
# Messages a stage finished either way: acked or dead-lettered (one selector, so a stage that
# never dead-lettered still has a value). The DLQ counter with its reason label: rate() drops
# __name__, and acked and facepipe_worker_dead_letters_total series share their labels (stage
# only), which one vector cannot hold.
FINISHED = '{__name__=~"facepipe_worker_msgs_acked_total|facepipe_worker_msgs_dlq_total"'


# --- Queries -----------------------------------------------------------------------------------


def rate(metric: str, extra: str = "") -> str:
    """rate() over the dashboard's namespace/tenant selection; `metric` may open a selector."""
    selector = f"{SEL}, {extra}" if extra else SEL
    if metric.startswith("{"):
        return f"rate({metric}, {selector}}}[{RATE}])"
    return f"rate({metric}{{{selector}}}[{RATE}])"


def sum_rate(by: str, metric: str, extra: str = "") -> str:
    return f"sum by ({by}) ({rate(metric, extra)})"


def ratio(by: str, numerator: str, denominator: str) -> str:
    """One rate over another per `by`: a histogram's mean (sum / count), a share of messages."""
    return f"{sum_rate(by, numerator)} / {sum_rate(by, denominator)}"


def per_tenant_gauge(aggregation: str, by: str, metric: str) -> str:
    """A gauge aggregated per `by`: max for per-stream figures several replicas report alike."""
    return f"{aggregation} by ({by}) ({metric}{{{SEL}}})"


def backlog_expr(by: str) -> str:
    """lag + pending per stream, each counted once across ops-api replicas (as the HPA sees it)."""
    return (
        f"sum by ({by}) (max by (__name__, namespace, {by}, group) "
        f'({{__name__=~"facepipe_stream_lag|facepipe_stream_pending", {SEL}}}))'
    )


# Replicas per component from kube-state-metrics; tenant and component come from the
# Deployment's labels (kube-state-metrics --metric-labels-allowlist, see docs/alerts.md).
def deployment_replicas(metric: str) -> str:
    return (
        "sum by (tenant, component) (label_replace(label_replace("
        f"{metric} * on (namespace, deployment) group_left (label_facepipe_io_tenant, "
        "label_app_kubernetes_io_component) "
        'kube_deployment_labels{namespace=~"$namespace", label_facepipe_io_tenant=~"$tenant"}, '
        '"tenant", "$1", "label_facepipe_io_tenant", "(.+)"), '
        '"component", "$1", "label_app_kubernetes_io_component", "(.+)"))'
    )


def legend_of(by: str) -> str:
    """A legend naming each series by its labels: "tenant, stage" -> "{{tenant}} {{stage}}"."""
    return " ".join(f"{{{{{label}}}}}" for label in by.split(", "))


def rate_query(by: str, metric: str, extra: str = "") -> prometheus.Dataquery:
    return query(sum_rate(by, metric, extra), legend_of(by))


def gauge_query(aggregation: str, by: str, metric: str) -> prometheus.Dataquery:
    legend = legend_of(by).replace(" {{group}}", " / {{group}}")  # a group belongs to its stream
    return query(per_tenant_gauge(aggregation, by, metric), legend)


def replicas_query(metric: str, legend_suffix: str = "") -> prometheus.Dataquery:
    return query(deployment_replicas(metric), f"{{{{tenant}}}} {{{{component}}}}{legend_suffix}")


def quantile_queries(histogram: str, by: str) -> list[prometheus.Dataquery]:
    """p50/p95/p99 of a histogram per `by` label (and tenant, so "All" tenants stay apart)."""
    return [
        query(
            f"histogram_quantile({q}, sum by (le, tenant, {by}) ({rate(histogram + '_bucket')}))",
            f"{{{{tenant}}}} {{{{{by}}}}} p{round(q * 100)}",
        )
        for q in QUANTILES
    ]


def variables() -> list[Variable]:
    return [
        datasource_variable(),
        multi_select("namespace", "Namespace", "label_values(facepipe_stream_length, namespace)"),
        multi_select(
            "tenant", "Tenant", 'label_values(facepipe_stream_length{namespace=~"$namespace"}, tenant)'
        ),
    ]


# --- Dashboards --------------------------------------------------------------------------------


def overview() -> board.Dashboard:
    return dashboard(
        "facepipe-overview",
        "Face pipeline / Overview",
        "Throughput, latency, dedup, rejected faces and replicas of every face-pipeline stage.",
        tags=TAGS,
        variables=variables(),
        rows={
            "Throughput": [
                graph(
                    "Messages acked per second by stage",
                    "Messages each stage finished and acked (its output durably published).",
                    rate_query("tenant, stage", "facepipe_worker_msgs_acked_total"),
                ),
                graph(
                    "Faces per second by stage",
                    "Faces each stage handled: detected and accepted, embedded, indexed.",
                    rate_query("tenant, stage", "facepipe_faces_processed_total"),
                ),
                single_stat(
                    "Ingest rate",
                    "Images per second the detector finished (acked or dead-lettered).",
                    rate_query("tenant", FINISHED, ONLY_DETECTOR),
                ),
                graph(
                    "Messages in flight by stage",
                    "Messages a worker holds right now (read, not yet acked).",
                    gauge_query("sum", "tenant, stage", "facepipe_worker_inflight_messages"),
                    width=18,
                    height=6,
                ),
            ],
            "Latency": [
                graph(
                    "Message latency per stage (p50 / p95 / p99)",
                    "Time from reading a message to acking it, per stage.",
                    *quantile_queries("facepipe_message_duration_seconds", "stage"),
                    unit="s",
                ),
                graph(
                    "Step latency (p50 / p95 / p99)",
                    "The runbook's timings: detection (per image), embedding (per batch), storage "
                    "(per artifact), upsert (per batch).",
                    *quantile_queries("facepipe_stage_duration_seconds", "stage"),
                    unit="s",
                ),
                graph(
                    "Mean time per message by stage",
                    "Histogram sum over count: the figure the SlowProcessing alert watches (1 s).",
                    query(
                        ratio(
                            "tenant, stage",
                            "facepipe_message_duration_seconds_sum",
                            "facepipe_message_duration_seconds_count",
                        ),
                        legend_of("tenant, stage"),
                    ),
                    unit="s",
                    thresholds=(("green", None), ("red", 1.0)),
                ),
                graph(
                    "Embedder batch size",
                    "Faces per inference call (mean and p95): batching across messages at work.",
                    query(
                        ratio("tenant", "facepipe_embed_batch_size_sum", "facepipe_embed_batch_size_count"),
                        "{{tenant}} mean",
                    ),
                    query(
                        "histogram_quantile(0.95, sum by (le, tenant) "
                        f"({rate('facepipe_embed_batch_size_bucket')}))",
                        "{{tenant}} p95",
                    ),
                ),
            ],
            "Faces": [
                graph(
                    "Dedup hit rate",
                    "Near-duplicate faces skipped over faces that reached the dedup decision "
                    "(skipped + indexed).",
                    query(
                        f"{sum_rate('tenant', 'facepipe_faces_dup_skipped_total')} / "
                        f"({sum_rate('tenant', 'facepipe_faces_dup_skipped_total')} + "
                        f"{sum_rate('tenant', 'facepipe_faces_processed_total', ONLY_INDEXER)})",
                        "{{tenant}}",
                    ),
                    unit="percentunit",
                ),
                graph(
                    "Faces rejected by reason",
                    "Faces the quality gates turned down, per reason (size, score, blur, pose...).",
                    rate_query("tenant, reason", "facepipe_faces_rejected_total"),
                    stacked=True,
                ),
                graph(
                    "Dedup cache keys",
                    "Keys under dedup: in Redis (entries expire after DEDUP_TTL_SECONDS).",
                    gauge_query("max", "tenant", "facepipe_dedup_keys"),
                ),
                graph(
                    "Dedup cache memory",
                    "Redis memory used by the dedup keys.",
                    gauge_query("max", "tenant", "facepipe_dedup_memory_bytes"),
                    unit="bytes",
                ),
            ],
            "Replicas and readiness": [
                graph(
                    "Replicas per component",
                    "Current and desired replicas of each Deployment (kube-state-metrics).",
                    replicas_query("kube_deployment_status_replicas"),
                    replicas_query("kube_deployment_spec_replicas", " desired"),
                ),
                graph(
                    "Available replicas per component",
                    "Replicas passing readiness; the ComponentNotReady alert fires below desired.",
                    replicas_query("kube_deployment_status_replicas_available"),
                ),
                single_stat(
                    "Readiness checks",
                    "ops-api /ready per check: 1 healthy, 0 unhealthy (worst replica).",
                    gauge_query("min", "tenant, check", "facepipe_ready"),
                    thresholds=(("red", None), ("green", 1.0)),
                    width=24,
                    height=5,
                ),
            ],
        },
    )


def queues() -> board.Dashboard:
    per_group = "tenant, stream, group"
    return dashboard(
        "facepipe-queues",
        "Face pipeline / Queues and DLQ",
        "Redis stream depth per stream and consumer group, dead-letter streams, retries.",
        tags=TAGS,
        variables=variables(),
        rows={
            "Queue depth": [
                graph(
                    "Backlog (lag + pending) per stream",
                    "Messages the group has not finished: what the autoscalers scale on and the "
                    "QueueBacklog alert watches (1000).",
                    query(backlog_expr("tenant, stream"), legend_of("tenant, stream")),
                    thresholds=(("green", None), ("red", 1000.0)),
                ),
                graph(
                    "Stream length",
                    "XLEN: what is left to do, plus finished entries kept (behind a pending one, "
                    "or for STREAM_RETENTION_MS). Workers trim the rest.",
                    gauge_query("max", "tenant, stream", "facepipe_stream_length"),
                ),
                graph(
                    "Consumer-group lag",
                    "Entries never delivered to the group.",
                    gauge_query("max", per_group, "facepipe_stream_lag"),
                ),
                graph(
                    "Pending entries",
                    "Delivered to a consumer and not yet acked (reclaimed after CLAIM_IDLE_MS).",
                    gauge_query("max", per_group, "facepipe_stream_pending"),
                ),
                graph(
                    "Consumers per group",
                    "Consumers registered in each group (XINFO GROUPS).",
                    gauge_query("max", per_group, "facepipe_stream_consumers"),
                    width=24,
                    height=6,
                ),
            ],
            "Dead-letter queues": [
                graph(
                    "DLQ length",
                    "Entries in each <stream>:dlq.",
                    gauge_query("max", "tenant, stream", "facepipe_dlq_length"),
                ),
                graph(
                    "DLQ growth per hour",
                    "Entries added to each dead-letter stream over the last hour.",
                    query(
                        f"max by (tenant, stream) (delta(facepipe_dlq_length{{{SEL}}}[1h]))",
                        legend_of("tenant, stream"),
                    ),
                ),
                graph(
                    "Messages dead-lettered per second by stage and reason",
                    "The reasons (invalid_json, missing_fields, max_deliveries_exceeded, ...) "
                    "behind the HighDLQRate alert.",
                    rate_query("tenant, stage, reason", "facepipe_worker_msgs_dlq_total"),
                    stacked=True,
                ),
                graph(
                    "DLQ ratio by stage",
                    "Dead-lettered over finished (acked + dead-lettered); HighDLQRate fires over 10%.",
                    query(
                        ratio("tenant, stage", "facepipe_worker_dead_letters_total", FINISHED),
                        legend_of("tenant, stage"),
                    ),
                    unit="percentunit",
                    thresholds=(("green", None), ("red", 0.1)),
                ),
            ],
            "Retries": [
                graph(
                    "Transient errors per second by stage",
                    "Redis/S3/Qdrant unreachable: retried with backoff, never dead-lettered.",
                    rate_query("tenant, stage", "facepipe_worker_transient_errors_total"),
                ),
                graph(
                    "Redeliveries per second by stage",
                    "Pending messages reclaimed from a crashed or stuck consumer (XAUTOCLAIM).",
                    rate_query("tenant, stage", "facepipe_worker_redeliveries_total"),
                ),
            ],
        },
    )


DASHBOARDS = (overview, queues)


def render_all() -> dict[str, str]:
    """File name → JSON text, exactly as written to OUTPUT_DIR."""
    built = [make() for make in DASHBOARDS]
    return {f"{dashboard.build().uid}.json": to_json(dashboard) for dashboard in built}


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
