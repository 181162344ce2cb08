"""The alert rules: promtool check + unit tests, and proof that those unit tests have teeth."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from chartkit import ALERTS_DOC, REPO, RULES_FILE, alert_rules, promtool

PROMTOOL_TESTS = REPO / "tests" / "charts" / "alerts.promtool.yaml"
RUNBOOK_ALERTS = {"HighDLQRate", "QueueBacklog", "SlowProcessing"}
ALERTS_PAGE_URL = "https://github.com/face-pipeline/face-pipeline/blob/main/docs/alerts.md"


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(PROMTOOL_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_runbook_alerts_and_on_call_alerts_exist() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names >= RUNBOOK_ALERTS
    # On-call needs: a stage nobody consumes, a component not ready, a failing dependency.
    assert names >= {"StageNoConsumers", "ComponentNotReady", "DependencyNotReady"}


def test_every_alert_has_a_promtool_test_that_fires_and_one_that_stays_quiet() -> None:
    tests = yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for test in tests:
        for case in test["alert_rule_test"]:
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert fired == names, f"no firing case for {names - fired}"
    assert quiet == names, f"no quiet case for {names - quiet}"


@pytest.mark.parametrize("alert", sorted(rule["alert"] for rule in alert_rules()))
@pytest.mark.parametrize(
    "broken_expr",
    ["vector(1) > 2", "vector(1)"],
    ids=["never-fires", "always-fires"],
)
def test_promtool_tests_catch_a_broken_alert(alert: str, broken_expr: str, tmp_path: Path) -> None:
    """Replace one alert's expression: the promtool tests must notice (so they test something)."""
    rules = yaml.safe_load(RULES_FILE.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                rule["expr"] = broken_expr
    rules_copy = tmp_path / "charts" / "face-pipeline-operator" / "rules" / RULES_FILE.name
    rules_copy.parent.mkdir(parents=True)
    rules_copy.write_text(yaml.safe_dump(rules, sort_keys=False))
    tests_copy = tmp_path / "tests" / "charts" / PROMTOOL_TESTS.name
    tests_copy.parent.mkdir(parents=True)
    shutil.copy(PROMTOOL_TESTS, tests_copy)
    result = promtool("test", "rules", str(tests_copy), cwd=tmp_path)
    assert result.returncode != 0, f"promtool tests still pass with {alert}: {broken_expr}"
    assert alert in result.stdout + result.stderr


def test_runbook_sketches_are_not_used() -> None:
    """The Phase 3 example PromQL names series nobody exports; the rules must not copy them."""
    text = RULES_FILE.read_text()
    for sketch in ("rate(worker_msgs_dlq[", "redis_stream_length", "face_processing_time_ms"):
        assert sketch not in text


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lower-case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_each_alert_links_to_its_section_of_the_alerts_page() -> None:
    headings = [line[3:] for line in ALERTS_DOC.read_text().splitlines() if line.startswith("## ")]
    anchors = {github_anchor(h) for h in headings}
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        assert url == f"{ALERTS_PAGE_URL}#alert-{rule['alert'].lower()}"
        assert url.split("#", 1)[1] in anchors, f"docs/alerts.md lacks '## Alert: {rule['alert']}'"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= rule["annotations"].keys()
