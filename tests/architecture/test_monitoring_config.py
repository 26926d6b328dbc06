"""The monitoring files of the docker-compose stack promise only what exists: every metric a Grafana dashboard
plots is one the services export, with the labels it groups by, and Prometheus scrapes the services where
compose makes them serve."""

import json
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import qmp_collector.handlers  # noqa: F401 - each service's module registers the metrics it exports
import qmp_core.metrics  # noqa: F401
import qmp_deployer.handlers.alerts  # noqa: F401
import qmp_execution.handlers.bars  # noqa: F401
import qmp_risk.handlers  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "infra" / "grafana" / "dashboards").glob("*.json"))
METRIC = re.compile(r"\b((?:qmp|process)_[a-z0-9_]+)\b")
GROUPED_BY = re.compile(r"\bby \(([^)]*)\)")
SCRAPE_LABELS = {"service", "instance", "job"}  # added by Prometheus' scrape config (prometheus.yml)


def exported() -> dict[str, set[str]]:
    """Every sample name the process exports (counters' _total, histograms' _bucket/_count/_sum) → its labels."""
    names: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        labels = {label for sample in family.samples for label in sample.labels} | {
            *getattr(REGISTRY._names_to_collectors.get(family.name), "_labelnames", ())}
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
        for suffix in suffixes:
            names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def expressions(path: Path) -> list[str]:
    return [target["expr"] for panel in json.loads(path.read_text())["panels"] for target in panel["targets"]]


def test_dashboards_when_listed_then_the_trader_and_the_operator_are_there() -> None:
    assert [path.name for path in DASHBOARDS] == ["qmp-operator.json", "qmp-trader.json"]
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] == path.stem and len(board["panels"]) >= 10
        assert {panel["datasource"]["uid"] for panel in board["panels"]} == {"qmp-prometheus"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.stem)
def test_dashboard_when_its_queries_are_read_then_each_metric_and_grouping_label_is_exported(path: Path) -> None:
    names = exported()
    for expr in expressions(path):
        used = METRIC.findall(expr)
        assert used, expr
        unknown = [name for name in used if name not in names]
        assert not unknown, f"{path.name}: {expr} plots {unknown}, which no service exports"
        labels = set().union(*(names[name] for name in used)) | SCRAPE_LABELS
        for group in GROUPED_BY.findall(expr):
            missing = {label.strip() for label in group.split(",")} - labels
            assert not missing, f"{path.name}: {expr} groups by {missing}, which {used} do not carry"


def test_prometheus_when_compose_runs_the_services_then_it_scrapes_each_where_it_serves() -> None:
    config = (ROOT / "infra" / "prometheus" / "prometheus.yml").read_text()
    compose = (ROOT / "docker-compose.yml").read_text()
    port = re.search(r'QMP_METRICS_PORT: "(\d+)"', compose).group(1)  # type: ignore[union-attr]
    assert "QMP_METRICS_HOST: 0.0.0.0" in compose
    targets = dict(re.findall(r'targets: \["(\w+):(\d+)"\]', config))
    assert targets == dict.fromkeys(("collector", "risk", "execution", "deployer"), port)
    for service in targets:
        assert re.search(rf"^  {service}:$", compose, flags=re.MULTILINE), service
    for mounted in ("./infra/prometheus/prometheus.yml", "./infra/grafana/provisioning", "./infra/grafana/dashboards"):
        assert mounted in compose and (ROOT / mounted).exists(), mounted
    provider = (ROOT / "infra" / "grafana" / "provisioning" / "dashboards" / "qmp.yml").read_text()
    assert "path: /var/lib/grafana/dashboards" in provider and ":/var/lib/grafana/dashboards:ro" in compose
