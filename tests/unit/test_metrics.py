"""XrecMetrics: what the pipeline's calls do to the exposed series, read back from the registry."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from xrec.config import EVENT_TYPES, Settings
from xrec.metrics import (
    DLQ_REASONS,
    EVENT_OUTCOMES,
    INVALID_REASON,
    STORE_OPERATIONS,
    XrecMetrics,
    gpu_expected,
    metrics_table_markdown,
)

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def value(m: XrecMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def exposed_samples(m: XrecMetrics) -> dict[str, list[dict[str, str]]]:
    body, _ = m.render()
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(dict(sample.labels))
    return out


def test_two_instances_keep_separate_registries():
    a, b = XrecMetrics(), XrecMetrics()
    a.event("click", "processed")
    assert value(a, "xrec_events_total", type="click", outcome="processed") == 1
    assert value(b, "xrec_events_total", type="click", outcome="processed") == 0


def test_every_event_type_and_outcome_is_exposed_at_zero_before_any_record():
    m = XrecMetrics()
    for event_type in (*EVENT_TYPES, "impression", "unknown"):
        for outcome in EVENT_OUTCOMES:
            assert value(m, "xrec_events_total", type=event_type, outcome=outcome) == 0
    for outcome in ("upserted", "deleted", "dlq"):
        assert value(m, "xrec_items_total", outcome=outcome) == 0


def test_an_unreadable_event_type_is_counted_as_unknown():
    m = XrecMetrics()
    m.event(None, "dlq")
    m.event("telepathy", "dlq")
    m.event("purchase", "duplicate", count=3)
    assert value(m, "xrec_events_total", type="unknown", outcome="dlq") == 2
    assert value(m, "xrec_events_total", type="purchase", outcome="duplicate") == 3
    assert value(m, "xrec_events_total", type="telepathy", outcome="dlq") is None


def test_an_outcome_outside_the_fixed_set_is_a_programming_error():
    m = XrecMetrics()
    with pytest.raises(ValueError, match="outcome"):
        m.event("click", "ok")
    with pytest.raises(ValueError, match="outcome"):
        m.item("created")


def test_dlq_counts_reason_codes_by_topic():
    m = XrecMetrics(dlq_topics=["xrec.events"])
    m.dlq("not_json", "xrec.events")
    m.dlq("not_json", "xrec.events")
    m.dlq("bad_vector", "xrec.items")
    assert value(m, "xrec_dlq_records_total", reason="not_json", topic="xrec.events") == 2
    assert value(m, "xrec_dlq_records_total", reason="bad_vector", topic="xrec.items") == 1
    assert value(m, "xrec_dlq_records_total", reason="too_large", topic="xrec.events") == 0
    assert value(m, "xrec_dlq_records_total", reason="unknown_item", topic="xrec.events") == 0


def test_a_dlq_message_instead_of_a_code_is_counted_as_invalid_and_logged_once(caplog):
    m = XrecMetrics()
    with caplog.at_level(logging.WARNING, logger="xrec.metrics"):
        for _ in range(3):
            m.dlq("Expecting value: line 1 column 1 (char 0)", "xrec.events")
    assert value(m, "xrec_dlq_records_total", reason=INVALID_REASON, topic="xrec.events") == 3
    assert len([r for r in caplog.records if "not a short snake_case code" in r.getMessage()]) == 1
    labels = exposed_samples(m)["xrec_dlq_records_total"]
    assert {label["reason"] for label in labels} == {INVALID_REASON}


def test_dlq_reasons_are_label_safe_codes():
    m = XrecMetrics()
    for reason in DLQ_REASONS:
        m.dlq(reason, "xrec.events")
        assert value(m, "xrec_dlq_records_total", reason=reason, topic="xrec.events") == 1


def test_time_stage_observes_one_call_even_when_the_body_raises():
    m = XrecMetrics()
    with m.time_stage("encode"):
        pass
    with pytest.raises(RuntimeError), m.time_stage("encode"):
        raise RuntimeError("boom")
    assert value(m, "xrec_stage_seconds_count", stage="encode") == 2
    total = value(m, "xrec_stage_seconds_sum", stage="encode")
    assert total is not None and total >= 0
    assert value(m, "xrec_stage_seconds_count", stage="rank") == 0


def test_an_unknown_stage_is_refused():
    m = XrecMetrics()
    with pytest.raises(ValueError, match="stage"), m.time_stage("think"):
        pass


def test_observe_store_counts_failed_calls_as_requests_and_errors_and_reraises():
    m = XrecMetrics(store_backend="qdrant")
    with m.observe_store("query"):
        pass
    with pytest.raises(ConnectionError), m.observe_store("query"):
        raise ConnectionError("qdrant down")
    assert value(m, "xrec_store_request_seconds_count", backend="qdrant", operation="query") == 2
    assert value(m, "xrec_store_errors_total", backend="qdrant", operation="query") == 1
    for operation in STORE_OPERATIONS:
        assert value(m, "xrec_store_errors_total", backend="qdrant", operation=operation) is not None


def test_observe_store_without_a_backend_says_so():
    m = XrecMetrics()
    with pytest.raises(ValueError, match="backend"), m.observe_store("query"):
        pass
    with pytest.raises(ValueError, match="backend"):
        XrecMetrics(store_backend="redis")


def test_a_published_list_observes_length_and_event_to_publish_delay():
    m = XrecMetrics()
    m.list_published(10, event_ts_ms=1_000_000.0, now_ms=1_000_030.0)
    m.list_published(0)
    assert value(m, "xrec_lists_published_total", variant="A") == 2
    assert value(m, "xrec_list_length_count") == 2
    assert value(m, "xrec_list_length_bucket", le="0.0") == 1
    assert value(m, "xrec_list_length_sum") == 10
    assert value(m, "xrec_event_to_publish_seconds_count") == 1
    assert value(m, "xrec_event_to_publish_seconds_sum") == pytest.approx(0.03)
    assert value(m, "xrec_event_to_publish_seconds_bucket", le="0.025") == 0
    assert value(m, "xrec_event_to_publish_seconds_bucket", le="0.05") == 1


def test_an_event_stamped_in_the_future_is_observed_as_zero_delay():
    m = XrecMetrics()
    m.list_published(5, event_ts_ms=2_000.0, now_ms=1_000.0)
    assert value(m, "xrec_event_to_publish_seconds_sum") == 0
    assert value(m, "xrec_event_to_publish_seconds_bucket", le="0.001") == 1


def test_event_to_publish_buckets_span_one_millisecond_to_a_minute():
    buckets = [float(labels["le"]) for labels in exposed_samples(XrecMetrics())["xrec_event_to_publish_seconds_bucket"]]
    finite = [b for b in buckets if b != float("inf")]
    assert min(finite) == 0.001
    assert max(finite) == 60.0


def test_the_encoder_info_series_is_replaced_not_accumulated():
    m = XrecMetrics()
    m.set_encoder("intfloat/multilingual-e5-small", "cuda:0", "bfloat16", "torch")
    m.set_encoder("intfloat/multilingual-e5-small", "cpu", "bfloat16", "openvino")
    series = exposed_samples(m)["xrec_encoder_info"]
    assert series == [
        {"model": "intfloat/multilingual-e5-small", "device": "cpu", "backend": "openvino", "dtype": "bfloat16"}
    ]


def test_encoder_batches_and_errors_are_counted():
    m = XrecMetrics()
    m.encoder_batch(32, 2048)
    m.encoder_error()
    assert value(m, "xrec_encoder_batch_size_sum") == 32
    assert value(m, "xrec_texts_encoded_total") == 32
    assert value(m, "xrec_encoder_batch_tokens_bucket", le="2048.0") == 1
    assert value(m, "xrec_encoder_errors_total") == 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"XREC_DEVICE": "cuda:1"}, True),
        ({"XREC_DEVICE": "auto", "XREC_EXPECT_GPU": "true"}, True),
        ({"XREC_DEVICE": "cpu"}, False),
    ],
)
def test_the_gpu_expectation_follows_the_settings(env, expected):
    settings = Settings.from_env(env)
    assert gpu_expected(settings) is expected
    m = XrecMetrics.for_settings(settings)
    assert value(m, "xrec_encoder_gpu_expected") == (1 if expected else 0)


def test_for_settings_preregisters_store_operations_and_dlq_topics():
    settings = Settings.from_env({"XREC_STORE_BACKEND": "qdrant", "XREC_TOPIC_EVENTS": "shop.events"})
    m = XrecMetrics.for_settings(settings)
    assert value(m, "xrec_store_errors_total", backend="qdrant", operation="upsert") == 0
    assert value(m, "xrec_dlq_records_total", reason="not_json", topic="shop.events") == 0


def test_lag_of_a_revoked_partition_disappears():
    m = XrecMetrics()
    m.set_consumer_lag("xrec.events", 0, 12)
    m.set_consumer_lag("xrec.events", 1, -3)
    m.forget_partition("xrec.events", 0)
    m.forget_partition("xrec.events", 7)
    assert value(m, "xrec_consumer_lag", topic="xrec.events", partition="0") is None
    assert value(m, "xrec_consumer_lag", topic="xrec.events", partition="1") == 0


def test_state_gauges_and_build_info():
    m = XrecMetrics()
    assert value(m, "xrec_worker_ready") == 0
    m.set_ready(True)
    m.set_profiles(41)
    m.set_items_indexed(20_000)
    assert value(m, "xrec_worker_ready") == 1
    assert value(m, "xrec_profiles") == 41
    assert value(m, "xrec_items_indexed") == 20_000
    (build,) = exposed_samples(m)["xrec_build_info"]
    assert set(build) == {"version", "python"}


def test_every_exposed_sample_name_is_one_the_registry_declares():
    m = XrecMetrics(store_backend="edge", dlq_topics=["xrec.events"])
    m.set_encoder("m", "cpu", "float32")
    m.set_consumer_lag("xrec.events", 0, 1)
    exposed = set(exposed_samples(m))
    declared = m.series_names()
    assert exposed <= declared
    assert {name for name in declared if not name.endswith("_created")} <= exposed
    assert all(name.startswith("xrec_") for name in declared)


def test_names_follow_prometheus_conventions():
    for doc in XrecMetrics().docs:
        assert (doc.kind == "counter") == doc.name.endswith("_total"), doc.name
        assert not doc.name.endswith(("_milliseconds", "_ms", "_bytes_total_total")), doc.name
        if "seconds" in doc.name:
            assert doc.kind == "histogram" and doc.name.endswith("_seconds"), doc.name


def test_render_negotiates_openmetrics_for_scrapers_that_ask():
    m = XrecMetrics()
    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    assert b"xrec_events_total" in body
    body, content_type = m.render("application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_the_readme_carries_the_generated_metrics_table():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert metrics_table_markdown() in text, (
        "regenerate with: python -c 'from xrec.metrics import *; print(metrics_table_markdown())'"
    )
