"""Every metric the dashboard and the alert rules use exists in the service's /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml

from tests.conftest import ROOT
from tests.servers import Server

METRIC = re.compile(r"\b(mla_[a-z0-9_]+)")


def dashboard_exprs() -> list[str]:
    dash = json.loads((ROOT / "docker/grafana/dashboards/mla-serve.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((ROOT / "docker/prometheus/alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_dashboard_and_alert_metrics_exist(server: Server, clean_train_row: dict[str, str]) -> None:
    # one prediction, so that every labelled series has a sample
    assert server.post({"audio": Path(clean_train_row["audio"]), "video": Path(clean_train_row["video"])}).status_code == 200
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in httpx.get(f"{server.url}/metrics").text.splitlines()
        if line and line[0] != "#"
    }
    used = {
        name: source
        for source, exprs in (("dashboard", dashboard_exprs()), ("alerts", alert_exprs()))
        for e in exprs
        for name in METRIC.findall(e)
    }
    assert len(used) >= 10
    missing = {name: source for name, source in used.items() if name not in exposed}
    assert not missing, f"used but not exposed: {missing}"


def test_dashboard_covers_what_operators_watch() -> None:
    text = " ".join(dashboard_exprs())
    for name in (
        "mla_requests_total",
        "mla_request_seconds_bucket",
        "mla_batch_size",
        "mla_queue_seconds_bucket",
        "mla_inference_seconds_bucket",
        "mla_modality_subset_total",
        "mla_entropy_nats_bucket",
        "mla_fusion_weight_bucket",
        "mla_model_info",
    ):
        assert name in text, name
