"""Panel and dashboard shapes of the face-pipeline dashboards, built with grafana-foundation-sdk.

dashboards/generate.py says what each dashboard shows (PromQL, titles, rows); this module says
how a panel looks, so the twenty-odd panels share one definition of each shape. The SDK's
typed builders give the JSON model of the Grafana version its build targets (the exact pin in
the root pyproject.toml).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import TypeVar

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as board
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

# Every query goes to the data source the dashboard's $datasource variable selects.
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")

Thresholds = tuple[tuple[str, float | None], ...]
Panel = timeseries.Panel | stat.Panel
P = TypeVar("P", timeseries.Panel, stat.Panel)
Variable = board.QueryVariable | board.DatasourceVariable


def query(expr: str, legend: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().datasource(DATASOURCE).expr(expr).legend_format(legend).range()


def _with_basics(
    panel: P,
    title: str,
    description: str,
    queries: Sequence[prometheus.Dataquery],
    *,
    unit: str,
    thresholds: Thresholds,
    width: int,
    height: int,
) -> P:
    """What every panel shares: text, size, unit, a zero floor, thresholds, queries A, B, ..."""
    steps = [model.Threshold(color=color, value=value) for color, value in thresholds or (("green", None),)]
    panel.title(title).description(description).datasource(DATASOURCE).span(width).height(height)
    panel.unit(unit).min(0).thresholds(
        board.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)
    )
    for index, target in enumerate(queries):
        panel.with_target(target.ref_id(chr(ord("A") + index)))
    return panel


def graph(
    title: str,
    description: str,
    *queries: prometheus.Dataquery,
    unit: str = "short",
    stacked: bool = False,
    thresholds: Thresholds = (),
    width: int = 12,
    height: int = 8,
) -> timeseries.Panel:
    """A time series: thin lines, a table legend with last and max, thresholds drawn as lines."""
    panel = (
        timeseries.Panel()
        .color_scheme(board.FieldColor().mode(model.FieldColorModeId.PALETTE_CLASSIC))
        .draw_style(common.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(True)
        .stacking(
            common_builders.StackingConfig()
            .mode(common.StackingMode.NORMAL if stacked else common.StackingMode.NONE)
            .group("A")
        )
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.LINE if thresholds else common.GraphThresholdsStyleMode.OFF
            )
        )
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    return _with_basics(
        panel, title, description, queries, unit=unit, thresholds=thresholds, width=width, height=height
    )


def single_stat(
    title: str,
    description: str,
    *queries: prometheus.Dataquery,
    unit: str = "short",
    thresholds: Thresholds = (),
    width: int = 6,
    height: int = 6,
) -> stat.Panel:
    """The last value per series on a background coloured by its threshold, with a sparkline."""
    panel = (
        stat.Panel()
        .color_scheme(board.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.AREA)
        .text_mode(common.BigValueTextMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
    )
    return _with_basics(
        panel, title, description, queries, unit=unit, thresholds=thresholds, width=width, height=height
    )


# --- Dashboards --------------------------------------------------------------------------------


def datasource_variable() -> board.DatasourceVariable:
    return (
        board.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .hide(model.VariableHide.DONT_HIDE)
    )


def multi_select(name: str, label: str, values_query: str) -> board.QueryVariable:
    """A variable whose values a PromQL label_values() lists; several or All ("All" = .*)."""
    return (
        board.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query({"query": values_query, "refId": f"{name}-values"})
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .include_all(True)
        .multi(True)
        .all_value(".*")
        .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )


def dashboard(
    uid: str,
    title: str,
    description: str,
    *,
    tags: list[str],
    variables: list[Variable],
    rows: dict[str, list[Panel]],
) -> board.Dashboard:
    """Rows of panels, laid out left to right and top to bottom by the SDK; ids in that order.
    Linked to every dashboard with the same tags."""
    builder = (
        board.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(tags)
        .timezone(common.TimeZoneBrowser)
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .version(1)
        .refresh("30s")
        .time("now-6h", "now")
        .annotation(
            board.AnnotationQuery()
            .built_in(1)
            .datasource(model.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .name("Annotations & Alerts")
            .type("dashboard")
        )
        .link(
            board.DashboardLink("Other face-pipeline dashboards")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags(tags)
            .as_dropdown(False)
            .include_vars(True)
            .keep_time(True)
        )
        .variables(variables)
    )
    ids = itertools.count(1)
    for row_title, panels in rows.items():
        builder.with_row(board.Row(row_title).id(next(ids)))
        for panel in panels:
            builder.with_panel(panel.id(next(ids)))
    return builder


def to_json(dashboard: board.Dashboard) -> str:
    """The JSON model, keys sorted (an SDK upgrade that only reorders fields changes nothing)."""
    return json.dumps(dashboard.build(), cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
