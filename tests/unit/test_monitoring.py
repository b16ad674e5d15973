"""The monitoring in deploy/: the alerting rules pass ``promtool check rules`` and their unit
tests (``promtool test rules``), every alert fires in one test case and stays silent in another,
the dashboard's queries are PromQL, and every metric the rules, their tests and the dashboard
name is one the code exports (or is listed in PROMISED below).

The exported names are read from the source text of every module under cdc/ and sync_back/
(recursively, so modules may move into sub-packages): the names given to prometheus_client's
metric classes, as string literals or as the first item of the tuples a loop feeds them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "cdc-dashboard.json"
PACKAGES = (ROOT / "cdc", ROOT / "sync_back")

# Metrics that the rules or the dashboard use before the code exports them, name -> kind
# ("gauge", "counter", ...). Each is a promise: when the code exports one, remove it here
# (test_promised_... says so). None is outstanding.
PROMISED: dict[str, str] = {}

PREFIX = r"(?:cdc|sync_back)_"
KINDS = r"(?P<kind>Counter|Gauge|Histogram|Summary)(?:MetricFamily)?"
# Counter("name", ...), GaugeMetricFamily("name", ...)
DECLARED = re.compile(rf"\b{KINDS}\(\s*(?P<q>['\"])(?P<name>{PREFIX}\w+)(?P=q)")
# for name, help_text, value in (("name", ...), ...): ... CounterMetricFamily(name, ...)
LOOP = re.compile(
    rf"\bfor\s+(?P<var>\w+)\s*,[^\n]*?\bin\s*[(\[](?P<body>.*?)\b{KINDS}\(\s*(?P=var)\b", re.S
)
TUPLE_HEAD = re.compile(rf"[(\[]\s*(?P<q>['\"])(?P<name>{PREFIX}\w+)(?P=q)\s*,")

# PromQL: string literals (label values, which may hold Grafana variables) and Grafana
# variables are removed before looking for metric names.
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
METRIC = re.compile(rf"(?<![\w:$])(?P<name>{PREFIX}[A-Za-z0-9_:]*)")
# Grafana's interval variables, replaced by a duration for promtool to parse the query.
INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def exposed(name: str, kind: str) -> set[str]:
    """The names a metric declared as ``name`` appears under in the exposition format."""
    kind = kind.lower()
    if kind == "counter":  # prometheus_client drops a trailing _total, then adds it
        return {name.removesuffix("_total") + "_total"}
    if kind == "histogram":
        return {name + "_bucket", name + "_count", name + "_sum"}
    if kind == "summary":
        return {name, name + "_count", name + "_sum"}
    return {name}


def declarations(source: str) -> dict[str, str]:
    """Metric name -> kind, for the metrics a module's source text declares."""
    found = {match["name"]: match["kind"] for match in DECLARED.finditer(source)}
    for loop in LOOP.finditer(source):
        found |= {head["name"]: loop["kind"] for head in TUPLE_HEAD.finditer(loop["body"])}
    return found


def declared_metrics() -> dict[str, str]:
    """Metric name -> kind, for every metric the code under cdc/ and sync_back/ declares."""
    found: dict[str, str] = {}
    for package in PACKAGES:
        for module in sorted(package.rglob("*.py")):
            found |= declarations(module.read_text())
    return found


def exported_names() -> set[str]:
    names: set[str] = set()
    for name, kind in declared_metrics().items():
        names |= exposed(name, kind)
    return names


def metric_names(promql: str) -> set[str]:
    text = GRAFANA_VARIABLE.sub("", STRING.sub('""', promql))
    return {match["name"] for match in METRIC.finditer(text)}


def load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, query) for every panel target and templating query of the dashboard."""

    def walk(node: Any, where: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            title = node.get("title") or node.get("name") or where
            expr = node.get("expr")
            if isinstance(expr, str):
                yield f"{title} {node.get('refId', '')}".strip(), expr
            for value in node.values():
                yield from walk(value, title)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value, where)

    dashboard = json.loads(DASHBOARD.read_text())
    yield from walk(dashboard["panels"], "panels")
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield (
                f"variable {variable['name']}",
                query if isinstance(query, str) else query["query"],
            )


def rule_test_series() -> Iterator[tuple[str, str]]:
    for index, case in enumerate(yaml.safe_load(RULE_TESTS.read_text())["tests"]):
        for series in case.get("input_series", []):
            yield f"test case {index}", series["series"].split("{", 1)[0].strip()


def used_metrics() -> dict[str, set[str]]:
    """Metric name -> where it is used (alert names, dashboard panels, rule test series)."""
    used: dict[str, set[str]] = {}
    sources: list[tuple[str, str]] = [
        (f"alert {rule['alert']}", rule["expr"]) for rule in load_rules()
    ]
    sources += [(f"dashboard: {where}", query) for where, query in dashboard_queries()]
    sources += [(f"{RULE_TESTS.name}: {where}", series) for where, series in rule_test_series()]
    for where, promql in sources:
        for name in metric_names(promql):
            used.setdefault(name, set()).add(where)
    return used


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI must run the rule checks")
        pytest.skip(message)
    return path


def run_promtool(*args: str) -> None:
    result = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_rules_pass_promtool_check() -> None:
    run_promtool("check", "rules", str(RULES))


def test_rules_pass_their_promtool_unit_tests() -> None:
    run_promtool("test", "rules", str(RULE_TESTS))


def test_dashboard_queries_are_promql(tmp_path: Path) -> None:
    """promtool parses each panel query, as a recording rule, Grafana's intervals replaced."""
    rules = []
    for index, (_where, query) in enumerate(dashboard_queries()):
        if query.lstrip().startswith("label_values("):  # Grafana's, not PromQL
            continue
        for variable, duration in INTERVALS.items():
            query = query.replace(variable, duration)
        rules.append({"record": f"dashboard_query_{index}", "expr": query})
    assert rules
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool("check", "rules", str(path))


def test_dashboard_uses_the_datasource_variable() -> None:
    text = DASHBOARD.read_text()
    dashboard = json.loads(text)
    names = [variable["name"] for variable in dashboard["templating"]["list"]]
    assert "DS_PROMETHEUS" in names
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', text)) - {dashboard["uid"]}
    assert uids == {"${DS_PROMETHEUS}"}


def test_every_metric_used_is_exported_by_the_code() -> None:
    exported = exported_names()
    assert exported, "no metric declarations found under cdc/ and sync_back/"
    promised = set().union(*(exposed(name, kind) for name, kind in PROMISED.items()))
    missing = {
        name: sorted(where)
        for name, where in used_metrics().items()
        if name not in exported | promised
    }
    assert not missing, (
        f"metrics used but neither exported by the code nor promised: {missing}; "
        f"the code exports {sorted(exported)}"
    )


def test_promised_metrics_are_used_and_not_yet_exported() -> None:
    declared = declared_metrics()
    used = used_metrics()
    for name, kind in PROMISED.items():
        assert name not in declared, f"the code exports {name} now: remove it from PROMISED"
        assert exposed(name, kind) & used.keys(), f"{name} is promised but nothing uses it"


def test_every_alert_says_what_to_do_and_is_tested_both_ways() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for rule in load_rules():
        name = rule["alert"]
        assert {"summary", "description"} <= rule.get("annotations", {}).keys(), name
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name} never fires in a test"
        assert any(not case.get("exp_alerts") for case in mine), f"{name} is never silent"


@pytest.mark.parametrize(
    ("promql", "names"),
    [
        (
            'sum by (code) (rate(cdc_publish_retries_total{job=~"$cdc_job"}[$__rate_interval]))',
            {"cdc_publish_retries_total"},
        ),
        (
            'time() - max(sync_back_last_poll_timestamp_seconds{instance="cdc_x"}) > ${cdc_job}',
            {"sync_back_last_poll_timestamp_seconds"},
        ),
        ("a_cdc_thing + cdc_lag_seconds", {"cdc_lag_seconds"}),
    ],
)
def test_metric_names_are_read_from_promql(promql: str, names: set[str]) -> None:
    assert metric_names(promql) == names


def test_declarations_are_found_in_loops_and_calls() -> None:
    source = """
        for name, help_text, value in (
            ("cdc_a", "help (with parentheses)", 1),
            ("cdc_b", "help", 2),
        ):
            counter = CounterMetricFamily(name, help_text)
        lag = GaugeMetricFamily("cdc_c_seconds", "help")
        total = CounterMetricFamily("sync_back_d_total", "help")
    """
    assert declarations(source) == {
        "cdc_a": "Counter",
        "cdc_b": "Counter",
        "cdc_c_seconds": "Gauge",
        "sync_back_d_total": "Counter",
    }
    assert exposed("sync_back_d_total", "Counter") == {"sync_back_d_total"}
    assert exposed("cdc_a", "Counter") == {"cdc_a_total"}
