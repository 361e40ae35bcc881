"""The alert rules, their unit tests and the dashboard's queries, checked by the real promtool.

promtool comes from Debian's ``prometheus`` package (``deploy/install-promtool.sh``). Without it
these tests skip, except in CI (``CI`` set), where a missing promtool is a failure: the rules must
be tested there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "xrec.json"
INSTALL = REPO / "deploy" / "install-promtool.sh"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = f"promtool not found: run {INSTALL.relative_to(REPO)} (Debian package 'prometheus')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_promtool_accepts_the_rules(promtool):
    result = run(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_the_rule_unit_tests_pass(promtool):
    result = run(promtool, "test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_accepts_the_compose_prometheus_config(promtool):
    result = run(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_is_valid_promql(promtool, tmp_path):
    """Each panel query, with Grafana's variables filled in, loads as a recording rule."""
    exprs = [
        target["expr"].replace("$__rate_interval", "2m").replace("$instance", ".*")
        for panel in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
        for target in panel.get("targets", [])
    ]
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = run(promtool, "check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout + result.stderr


def test_the_install_script_does_nothing_when_promtool_is_present(promtool):
    result = run("bash", str(INSTALL), cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "promtool present" in result.stdout
    assert "prometheus present" in result.stdout


# --- coverage of the unit tests (no promtool needed) ------------------------------------------
def test_every_alert_has_a_firing_test_case():
    alerts = {rule["alert"] for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule}
    firing = {
        case["alertname"]
        for test in load_yaml(ALERTS_TEST)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts - firing == set()


def test_every_alert_has_a_quiet_test_case():
    alerts = {rule["alert"] for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule}
    quiet = {
        case["alertname"]
        for test in load_yaml(ALERTS_TEST)["tests"]
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    assert alerts - quiet == set()


def test_every_recording_rule_is_evaluated_by_a_test():
    records = {rule["record"] for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "record" in rule}
    exprs = " ".join(
        case["expr"] for test in load_yaml(ALERTS_TEST)["tests"] for case in test.get("promql_expr_test", [])
    )
    assert {record for record in records if record not in exprs} == set()
