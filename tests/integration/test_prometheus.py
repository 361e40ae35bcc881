"""A real Prometheus server scrapes a real worker on loopback and evaluates the shipped rules.

Prometheus is the Debian package's binary (``deploy/install-promtool.sh`` installs it), run as a
subprocess with its own config, storage and port in a temp dir, scraping and evaluating every
second. Without the binary these tests skip, except in CI (``CI`` set), where that is a failure.

The rules Prometheus loads are the shipped ``deploy/prometheus/alerts.yml`` with only the time
scales shortened, so a test takes seconds rather than the production 5-10 minutes: every group is
evaluated each second, every range selector (``[5m]``, ``[10m]``) becomes ``[1m]``, and
``XrecDeadLetterRateHigh`` waits ``for: 5s`` instead of ``5m``. Expressions, thresholds (5% of
input) and labels are exactly the shipped ones; the shipped file itself is never modified.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from tests.integration.conftest import WorkerEnv, WorkerProcess
from xrec.broker import free_port
from xrec.config import Settings
from xrec.metrics import XrecMetrics
from xrec.topics import vectors_topic
from xrec.vectors import VectorSpace

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
INSTALL = REPO / "deploy" / "install-promtool.sh"
DIM = 16
ITEMS = 12
DLQ_ALERT = "XrecDeadLetterRateHigh"
TEST_RANGE = "1m"
TEST_FOR = "5s"


# --- the Prometheus server ---------------------------------------------------------------------
def prometheus_binary() -> str:
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None)
    if path is None:
        message = f"prometheus server not found: run {INSTALL.relative_to(REPO)} (Debian package 'prometheus')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def fast_rules(shipped: dict[str, Any]) -> dict[str, Any]:
    """The shipped rules with seconds-scale windows (see the module docstring); nothing else changes."""
    rules = json.loads(json.dumps(shipped))  # a deep copy
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[\d+[smh]\]", f"[{TEST_RANGE}]", rule["expr"])
            if rule.get("alert") == DLQ_ALERT:
                rule["for"] = TEST_FOR
    return rules


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def value(self, expr: str) -> float | None:
        """The single sample ``expr`` returns now, or None when it returns nothing."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def alert_states(self, name: str) -> list[str]:
        return [a["state"] for a in self.api("alerts")["alerts"] if a["labels"].get("alertname") == name]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start_prometheus(binary: str, tmp: Path, target: str) -> Prometheus:
    rules = fast_rules(yaml.safe_load(ALERTS.read_text(encoding="utf-8")))
    (tmp / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [{"job_name": "xrec", "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    port = free_port()
    log_path = tmp / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(proc, port, log_path)
    wait_for(lambda: proc.poll() is not None or _answers(f"http://127.0.0.1:{port}/-/ready"), 60, "Prometheus ready")
    assert proc.poll() is None, f"prometheus exited with {proc.returncode}:\n{prom.log_tail()}"
    return prom


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.25) -> float:
    """Seconds until ``condition()`` held; fails the test after ``timeout_s``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():
            return time.monotonic() - start
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for: {what}")


# --- the worker --------------------------------------------------------------------------------
def catalog() -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    now = int(time.time() * 1000)
    return [
        {"item_id": f"P{i}", "title": f"item {i}", "lang": "en", "vector": rng.standard_normal(DIM).tolist(), "ts": now}
        for i in range(ITEMS)
    ]


def click(user: str, item: str, n: int) -> dict[str, Any]:
    return {"event_id": f"{user}-{n}", "user_id": user, "item_id": item, "type": "click", "ts": int(time.time() * 1000)}


@dataclass
class Scraped:
    worker: WorkerProcess
    prometheus: Prometheus
    env: WorkerEnv


@pytest.fixture
def prometheus_path() -> str:
    return prometheus_binary()


@pytest.fixture
def scraped(prometheus_path: str, worker_env: WorkerEnv, tmp_path: Path) -> Iterator[Scraped]:
    """A ready worker with a catalog and two processed events, scraped by a fresh Prometheus.

    ``prometheus_path`` comes first so a missing binary skips before the broker and worker start.
    """
    worker = worker_env.start_worker("--no-encoder", "--dim", str(DIM))
    worker_env.produce_json(worker_env.topics["items"], "item_id", catalog())
    wait_for(lambda: worker.metrics().sum("xrec_items_indexed") >= ITEMS, 60, "items indexed")
    worker_env.produce_json(worker_env.topics["events"], "user_id", [click("U1", "P0", 0), click("U2", "P3", 1)])
    wait_for(lambda: worker.metrics().sum("xrec_lists_published_total") >= 2, 60, "two lists published")
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    prom = start_prometheus(prometheus_path, prom_dir, f"127.0.0.1:{worker.web_port}")
    try:
        yield Scraped(worker, prom, worker_env)
    finally:
        prom.proc.terminate()
        try:
            prom.proc.wait(30)
        except subprocess.TimeoutExpired:
            prom.proc.kill()
            prom.proc.wait(10)


def exposed_series(worker: WorkerProcess) -> set[str]:
    """Sample names in the worker's own exposition (``_created`` timestamps are not samples Prometheus keeps)."""
    return {name for name, _, _ in worker.metrics().samples if not name.endswith("_created")}


# --- the tests ---------------------------------------------------------------------------------
def test_prometheus_scrapes_the_worker_and_stores_every_xrec_metric(scraped: Scraped) -> None:
    prom, worker, env = scraped.prometheus, scraped.worker, scraped.env
    waited = wait_for(lambda: prom.value('up{job="xrec"}') == 1.0, 60, "target up")
    # Two events keyed by something else than their user: re-keyed through <events>-by-user, counted once.
    env.produce(
        env.topics["events"], [(b"elsewhere", orjson.dumps(click(u, "P5", n))) for n, u in ((7, "U3"), (8, "U4"))]
    )
    wait_for(lambda: worker.metrics().sum("xrec_lists_published_total") >= 4, 60, "lists for the re-keyed events")

    [target] = prom.api("targets")["activeTargets"]
    assert target["health"] == "up", target
    assert target["labels"]["job"] == "xrec"
    assert target["scrapeUrl"] == f"http://127.0.0.1:{worker.web_port}/metrics"
    assert target["lastError"] == ""

    # Every family the worker declares is exposed, except the encoder info of this encoder-less worker.
    exposed = exposed_series(worker)
    declared = {doc.name for doc in XrecMetrics().docs} - {"xrec_encoder_info"}
    families = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in exposed}
    assert declared - families == set()
    # ... and Prometheus stored every one of those series (lag appears once the lag timer ran).
    wait_for(lambda: prom.value("count(xrec_consumer_lag)") is not None, 60, "consumer lag series in Prometheus")
    wait_for(lambda: exposed <= set(prom.api("label/__name__/values")), 30, "every exposed series in Prometheus")

    assert prom.value('xrec_worker_ready{job="xrec"}') == 1.0
    assert prom.value("xrec_items_indexed") == ITEMS
    wait_for(lambda: prom.value("xrec_lists_published_total") == 4.0, 30, "four lists in Prometheus")
    assert prom.value('sum(xrec_events_total{outcome="processed"})') == 4.0
    assert prom.value("sum(xrec_events_total)") == 4.0  # four records read, each counted once
    assert prom.value("count(xrec_build_info == 1)") == 1.0
    # The worker watches its garbage collector from the start: the full collection before it froze what lives forever.
    assert worker.metrics().sum("xrec_gc_pause_seconds_count", generation="2") >= 1
    # Lag is per topic-partition of what the worker consumes, and everything produced was processed.
    wait_for(lambda: prom.value("sum(xrec_consumer_lag)") == 0.0, 60, "consumer lag back to 0")
    lag_topics = {s["metric"]["topic"] for s in prom.query("xrec_consumer_lag")}
    topics = env.topics
    encoded = vectors_topic(Settings(topic_items=topics["items"]), VectorSpace.precomputed(DIM))  # the indexer's input
    assert lag_topics == {topics["events"], f"{topics['events']}-by-user", topics["control"], topics["items"], encoded}

    # The shipped rules load and evaluate without error against the real series.
    def rules() -> list[dict[str, Any]]:
        return [rule for group in prom.api("rules")["groups"] for rule in group["rules"]]

    assert len(rules()) == sum(len(g["rules"]) for g in yaml.safe_load(ALERTS.read_text())["groups"])
    wait_for(lambda: all(rule["health"] != "unknown" for rule in rules()), 30, "every rule evaluated")
    assert {r["name"]: r.get("lastError") for r in rules() if r["health"] != "ok"} == {}
    print(f"\ntarget {target['scrapeUrl']} health={target['health']} after {waited:.1f}s; {len(exposed)} series")


def test_the_dlq_alert_goes_pending_then_firing_after_a_burst_of_malformed_records(scraped: Scraped) -> None:
    prom, worker, env = scraped.prometheus, scraped.worker, scraped.env
    wait_for(lambda: prom.value('up{job="xrec"}') == 1.0, 60, "target up")
    wait_for(lambda: prom.value("job:xrec_input_records:rate5m") is not None, 60, "input rate recorded")
    time.sleep(3)  # a few evaluations of the healthy state
    assert prom.alert_states(DLQ_ALERT) == [], "the DLQ alert is active before any bad record"
    assert prom.value("job:xrec_dlq_records:rate5m") == 0.0

    bad = [b"not json at all", b'{"user_id": "U1"}', b"\xff\xfe\x00", b"[1, 2, 3]", b'{"type": "click"}']
    burst: list[tuple[bytes | None, bytes | None]] = [(f"U{i % 3}".encode(), bad[i % len(bad)]) for i in range(40)]
    sent_at = time.monotonic()
    env.produce(env.topics["events"], burst)
    wait_for(lambda: worker.metrics().sum("xrec_dlq_records_total") >= len(burst), 60, "burst dead-lettered")

    wait_for(lambda: "pending" in prom.alert_states(DLQ_ALERT), 60, f"{DLQ_ALERT} pending")
    pending_at = time.monotonic()
    wait_for(lambda: "firing" in prom.alert_states(DLQ_ALERT), 60, f"{DLQ_ALERT} firing")
    firing_at = time.monotonic()

    [alert] = [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == DLQ_ALERT]
    assert alert["labels"] == {"alertname": DLQ_ALERT, "job": "xrec", "severity": "warning"}
    share = float(alert["value"])
    assert 0.05 < share <= 1.0, alert
    assert "dead-letter" in alert["annotations"]["summary"]
    # Each record of the burst counted once as input, as dead-lettered and in the DLQ counter.
    assert prom.value('sum(xrec_events_total{outcome="dlq"})') == len(burst)
    by_reason = {
        s["metric"]["reason"]: float(s["value"][1]) for s in prom.query("sum by (reason) (xrec_dlq_records_total) > 0")
    }
    assert by_reason == {"not_json": 8, "missing_field": 16, "invalid_utf8": 8, "not_object": 8}
    # Only the DLQ alert fires: the worker itself stays healthy.
    others = {a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]} - {DLQ_ALERT}
    assert others == set(), others
    print(
        f"\n{DLQ_ALERT}: pending {pending_at - sent_at:.1f}s after the burst, firing {firing_at - sent_at:.1f}s "
        f"after it (for: {TEST_FOR}, ranges [{TEST_RANGE}]); DLQ share {share:.2f}; reasons {by_reason}"
    )
