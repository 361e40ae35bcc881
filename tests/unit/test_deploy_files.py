"""The deploy files agree with the code and with each other.

No Docker engine or cluster here, so these tests read the files: the dashboard and the rules select
only series XrecMetrics exposes, images are pinned, every XREC_* name is a real setting, ports and
names line up between worker, Prometheus, Service and Grafana, and the PrometheusRule is alerts.yml.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from xrec.config import Settings, env_name
from xrec.metrics import XrecMetrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "xrec.json"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
SETTINGS_ENV_NAMES = frozenset(env_name(f) for f in Settings.__dataclass_fields__)

# --- reading PromQL just enough ---------------------------------------------------------------
# Not a parser: strings, label matchers, ranges and grouping clauses are removed, and the
# identifiers left are metric names. An identifier it does not know fails the test, never passes it.

FUNCTIONS_AND_KEYWORDS = frozenset(
    """
    sum min max avg count stddev stdvar topk bottomk quantile count_values group
    rate irate increase delta idelta deriv predict_linear histogram_quantile absent absent_over_time
    round ceil floor abs clamp clamp_min clamp_max label_replace label_join vector scalar time
    sum_over_time avg_over_time max_over_time min_over_time count_over_time last_over_time changes resets
    and or unless bool offset by without on ignoring group_left group_right
    """.split()  # noqa: SIM905 - a word list reads better than 53 quoted strings
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


def metric_names(expr: str) -> set[str]:
    """Metric (and recording-rule) names selected by ``expr``."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    return {m.group(0) for m in _IDENT.finditer(text) if m.group(0) not in FUNCTIONS_AND_KEYWORDS}


def label_names(expr: str) -> set[str]:
    """Label names used in matchers and grouping clauses of ``expr``."""
    text = _STRING.sub('""', expr)
    labels: set[str] = set()
    for block in _MATCHERS.findall(text):
        labels.update(_MATCHER_LABEL.findall(block))
    for block in _GROUPING.findall(_MATCHERS.sub("", text)):
        labels.update(part.strip() for part in block.split(",") if part.strip())
    return labels


# --- loading --------------------------------------------------------------------------------------
def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    exprs: list[str] = []
    for panel in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]:
        exprs.extend(target["expr"] for target in panel.get("targets", []))
    return exprs


def k8s_docs() -> dict[str, dict[str, Any]]:
    """Every manifest in deploy/k8s by kind (one of each kind there)."""
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                assert doc["kind"] not in docs, f"two {doc['kind']} manifests"
                docs[doc["kind"]] = doc
    return docs


def read_env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            if current.strip():
                logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


RECORDED = {rule["record"] for rule in rules() if "record" in rule}
EXPOSED = XrecMetrics().series_names()
KNOWN_LABELS = {label for doc in XrecMetrics().docs for label in doc.labels} | {"job", "instance", "le"}


def unknown_names(expr: str) -> set[str]:
    return {name for name in metric_names(expr) if name not in EXPOSED | RECORDED | {"up"}}


# --- the reader itself --------------------------------------------------------------------------
def test_the_promql_reader_finds_metrics_and_labels_but_not_functions_or_durations():
    expr = (
        'histogram_quantile(0.99, sum by (job, stage, le) (rate(xrec_stage_seconds_bucket{job="xrec", '
        'instance=~"$instance"}[$__rate_interval]))) / 1e3 unless on (job) job:xrec_x:p99_5m'
    )
    assert metric_names(expr) == {"xrec_stage_seconds_bucket", "job:xrec_x:p99_5m"}
    assert label_names(expr) == {"job", "instance", "stage", "le"}
    assert unknown_names("rate(xrec_event_total[5m])") == {"xrec_event_total"}


# --- rules and dashboard against the code -----------------------------------------------------
def test_every_metric_the_rules_use_is_one_the_worker_exposes():
    for rule in rules():
        assert not unknown_names(rule["expr"]), (rule.get("alert") or rule.get("record"), unknown_names(rule["expr"]))
        assert label_names(rule["expr"]) <= KNOWN_LABELS, rule["expr"]


def test_every_metric_the_dashboard_uses_is_one_the_worker_exposes():
    exprs = dashboard_exprs()
    assert len(exprs) > 20
    for expr in exprs:
        assert not unknown_names(expr), (expr, unknown_names(expr))
        assert label_names(expr) <= KNOWN_LABELS, expr


def test_the_dashboard_covers_throughput_latency_lag_dlq_encoder_store_lists_batches_and_commits():
    used = {name for expr in dashboard_exprs() for name in metric_names(expr)}
    for name in (
        "xrec_events_total",
        "xrec_items_total",
        "xrec_event_to_publish_seconds_bucket",
        "xrec_stage_seconds_bucket",
        "xrec_consumer_lag",
        "xrec_dlq_records_total",
        "xrec_encoder_batch_size_bucket",
        "xrec_encoder_batch_tokens_sum",
        "xrec_encoder_info",
        "xrec_encoder_errors_total",
        "xrec_store_request_seconds_bucket",
        "xrec_store_errors_total",
        "xrec_lists_published_total",
        "xrec_list_length_bucket",
        "xrec_profiles",
        "xrec_items_indexed",
        "xrec_build_info",
        "xrec_worker_ready",
        "xrec_batch_seconds_sum",
        "xrec_commit_seconds_bucket",
        "xrec_gc_pause_seconds_sum",
    ):
        assert name in used, name


def test_the_dashboard_is_well_formed_for_grafana():
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert board["uid"] and board["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in board["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"


def test_every_alert_has_a_severity_and_runbook_annotations():
    alerts = [rule for rule in rules() if "alert" in rule]
    assert len(alerts) >= 10
    for rule in alerts:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert re.search(r"^1\. ", rule["annotations"]["runbook"], re.M), rule["alert"]


def test_the_readme_explains_every_alert():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for rule in rules():
        if "alert" in rule:
            assert f"#### {rule['alert']} ({rule['labels']['severity']})" in text, rule["alert"]


# --- Kubernetes -------------------------------------------------------------------------------
def test_the_prometheus_rule_is_the_alerts_file():
    rule = k8s_docs()["PrometheusRule"]
    assert rule["spec"] == load_yaml(ALERTS), "run deploy/k8s/sync-rules.sh after editing alerts.yml"


def test_the_kustomization_lists_files_that_exist():
    kustomization = load_yaml(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    for generator in kustomization["configMapGenerator"]:
        for env_file in generator["envs"]:
            assert (K8S / env_file).is_file(), env_file


def test_kubernetes_names_ports_and_probes_line_up():
    docs = k8s_docs()
    env = read_env_file(K8S / "worker.env")
    port = int(env["XREC_WEB_PORT"])
    assert env["XREC_WEB_HOST"] == "0.0.0.0"
    assert env["XREC_STORE_BACKEND"] == "qdrant"

    pod = docs["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["xrec", "worker"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    generated = {g["name"] for g in load_yaml(K8S / "kustomization.yaml")["configMapGenerator"]}
    assert {ref["configMapRef"]["name"] for ref in container["envFrom"]} <= generated

    service = docs["Service"]
    assert service["metadata"]["name"] == "xrec", "the Service name is the job name the rules select"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (service_port,) = service["spec"]["ports"]
    assert (service_port["name"], service_port["port"], service_port["targetPort"]) == ("http", port, "http")

    monitor = docs["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"]
    assert all('job="xrec"' in rule["expr"] for rule in rules() if rule.get("alert", "").startswith("XrecWorkerDown"))


def test_the_autoscaler_never_runs_more_workers_than_partitions():
    docs = k8s_docs()
    hpa = docs["HorizontalPodAutoscaler"]
    partitions = int(read_env_file(K8S / "worker.env")["XREC_PARTITIONS"])
    assert hpa["spec"]["maxReplicas"] <= partitions
    assert docs["Deployment"]["spec"]["replicas"] <= partitions
    assert hpa["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]


def test_the_worker_env_file_is_valid_settings():
    settings = Settings.from_env(read_env_file(K8S / "worker.env"))
    assert settings.store_backend == "qdrant"


# --- docker compose ------------------------------------------------------------------------------
def test_compose_runs_kraft_kafka_qdrant_workers_prometheus_and_grafana():
    services = load_yaml(COMPOSE)["services"]
    assert set(services) >= {"kafka", "qdrant", "worker", "prometheus", "grafana"}
    kafka = services["kafka"]
    assert re.fullmatch(r"apache/kafka:3\.9\.\d+", kafka["image"])
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert not any("ZOOKEEPER" in key for key in kafka["environment"])

    worker = services["worker"]
    assert worker["command"] == ["xrec", "worker"]
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (COMPOSE.parent / worker["build"]["context"] / worker["build"]["dockerfile"]).resolve() == DOCKERFILE
    env = worker["environment"]
    assert env["XREC_STORE_BACKEND"] == "qdrant"
    assert env["XREC_WEB_HOST"] == "0.0.0.0"
    assert env["XREC_KAFKA_BOOTSTRAP"].split(":")[0] == "kafka"
    assert env["XREC_QDRANT_URL"].startswith("http://qdrant:")
    Settings.from_env({key: str(value) for key, value in env.items()})


def test_compose_keeps_the_gpu_reservation_ready_to_uncomment():
    text = COMPOSE.read_text(encoding="utf-8")
    commented = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if line.lstrip().startswith("#"))
    assert re.search(r"devices:\s*\n\s*- driver: nvidia\s*\n\s*count: 1\s*\n\s*capabilities: \[gpu\]", commented)
    uncommented = yaml.safe_load(
        re.sub(
            r"^(\s*)# (resources:|  reservations:|    devices:|      - driver|        count|        capabilities)",
            r"\1\2",
            text,
            flags=re.M,
        )
    )
    devices = uncommented["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_prometheus_scrapes_the_workers_on_their_web_port_and_loads_the_rules():
    services = load_yaml(COMPOSE)["services"]
    port = int(services["worker"]["environment"]["XREC_WEB_PORT"])
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "xrec"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == port
    assert job.get("metrics_path", "/metrics") == "/metrics"
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).resolve() == ALERTS
    prometheus = services["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_grafana_gets_the_datasource_and_dashboard_the_files_name():
    services = load_yaml(COMPOSE)["services"]
    mounts = dict(
        volume.rsplit(":", 1)[0].split(":", 1) for volume in services["grafana"]["volumes"] if volume.startswith("./")
    )
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "xrec.yml")["providers"][0]
    assert mounts["./grafana/xrec.json"] == provider["options"]["path"] + "/xrec.json"
    (datasource,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    assert "9090:9090" in services["prometheus"]["ports"]
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variable = next(v for v in board["templating"]["list"] if v["name"] == "datasource")
    assert variable["current"]["value"] == datasource["uid"]


# --- images, env names, ports across all files -----------------------------------------------------
def test_every_image_is_pinned_to_an_explicit_version():
    images = [service["image"] for service in load_yaml(COMPOSE)["services"].values() if "image" in service]
    images += [c["image"] for c in k8s_docs()["Deployment"]["spec"]["template"]["spec"]["containers"]]
    images += [args.split()[0] for instruction, args in dockerfile_instructions() if instruction == "FROM"]
    assert len(images) >= 7
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d+\.\d+", tag), image


def test_the_worker_image_tag_is_the_project_version():
    version = project_version()
    assert load_yaml(COMPOSE)["services"]["worker"]["image"] == f"xrec-worker:{version}"
    (container,) = k8s_docs()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"xrec-worker:{version}"
    (image,) = load_yaml(K8S / "kustomization.yaml")["images"]
    assert image["newTag"] == version


@pytest.mark.parametrize(
    "path",
    [COMPOSE, DOCKERFILE, *sorted(K8S.glob("*.yaml")), K8S / "worker.env"],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_every_xrec_variable_in_deploy_files_is_a_real_setting(path):
    names = set(re.findall(r"\bXREC_[A-Z0-9_]+\b", path.read_text(encoding="utf-8")))
    assert names <= SETTINGS_ENV_NAMES, names - SETTINGS_ENV_NAMES


def test_the_dockerfile_serves_the_worker_on_the_port_everyone_else_uses():
    instructions = dockerfile_instructions()
    env = dockerfile_env()
    assert env["XREC_WEB_HOST"] == "0.0.0.0"
    port = int(env["XREC_WEB_PORT"])
    assert ("EXPOSE", str(port)) in instructions
    assert ("CMD", '["xrec", "worker"]') in instructions
    assert port == Settings().web_port
    assert port == int(load_yaml(COMPOSE)["services"]["worker"]["environment"]["XREC_WEB_PORT"])
    assert port == int(read_env_file(K8S / "worker.env")["XREC_WEB_PORT"])
    assert any(instruction == "USER" and args != "root" for instruction, args in instructions)
    Settings.from_env(env)
