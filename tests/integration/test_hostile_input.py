"""Hostile records through a running worker: each has a defined outcome, none stops it, good ones go on.

Every case below is sent between good events of one user; afterwards the test checks the DLQ topic
(one record per refused input, with its reason), the worker's counters, the profiles of accepted
inputs, and that the worker is still alive and still answered the good events around the bad ones.
The soak pushes a few thousand records with 10% bad ones and checks the accounting exactly:
in = processed + dlq + duplicates.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from tests.integration.conftest import WorkerEnv, WorkerProcess, lists_for
from tests.integration.test_faults import (
    DIM,
    N_ITEMS,
    WORKER_ARGS,
    index_items,
    make_items,
    metric_sum,
    stored_profiles,
    wait_for,
)
from xrec.profile import event_fingerprint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MAX_RECORD_BYTES = 100_000  # below the broker's 1 MB message limit, so "huge" records reach the worker
MAX_TEXT_CHARS = 20_000


@dataclass(frozen=True)
class Case:
    name: str
    topic: str  # events, items or control
    key: bytes | None
    value: bytes | None
    outcome: str  # a DLQ reason code, or "accepted", "clamped", "duplicate"
    user: str | None = None  # for accepted events: whose profile must hold it
    event_id: str | None = None


def _now() -> int:
    return int(time.time() * 1000)


def event(event_id: str, user: str, item: str = "I0", etype: str = "click", **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "item_id": item, "type": etype, "ts": _now() - 60_000, **extra}


def impression(event_id: str, user: str, items: list[str]) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "type": "impression", "item_ids": items, "ts": _now() - 60_000}


def raw_event(event_id: str, ts: str) -> bytes:
    """An event whose ``ts`` is written as raw JSON text (NaN, Infinity, 1e400 cannot come from orjson)."""
    return (f'{{"event_id":"{event_id}","user_id":"U-{event_id}","item_id":"I0","type":"click","ts":{ts}}}').encode()


def hostile_cases() -> list[Case]:
    now = _now()
    nested_ok = b'{"x":' + b"[" * 500 + b"]" * 500 + b","
    good = orjson.dumps(event("nested-ok", "H-nested"))[1:]
    vec = [0.1] * DIM
    cases = [
        Case(
            "huge record", "events", b"k-huge", orjson.dumps({**event("huge", "H"), "pad": "x" * 150_000}), "too_large"
        ),
        Case(
            "deeply nested JSON",
            "events",
            b"k-deep",
            b'{"event_id":"deep","x":' + b"[" * 5_000 + b"]" * 5_000 + b"}",
            "not_json",
        ),
        Case(
            "nesting within the limit in an extra field",
            "events",
            b"H-nested",
            nested_ok + good,
            "accepted",
            "H-nested",
            "nested-ok",
        ),
        Case(
            "not UTF-8", "events", b"k-utf8", b'{"event_id":"u8","user_id":"\xff\xfe","item_id":"I0"}', "invalid_utf8"
        ),
        Case(
            "Latin-1 text",
            "events",
            b"k-latin1",
            orjson.dumps(event("l1", "H-café")).replace("café".encode(), "café".encode("latin-1")),
            "invalid_utf8",
        ),
        Case("NaN timestamp", "events", b"k-nan", raw_event("nan", "NaN"), "not_json"),
        Case("Infinity timestamp", "events", b"k-inf", raw_event("inf", "Infinity"), "not_json"),
        Case("1e400 timestamp", "events", b"k-1e400", raw_event("big", "1e400"), "not_json"),
        Case("timestamp far in the past", "events", b"k-past", raw_event("past", "631152000000"), "bad_timestamp"),
        Case("timestamp in seconds", "events", b"k-secs", raw_event("secs", str(now // 1000)), "bad_timestamp"),
        Case(
            "ISO timestamp without zone", "events", b"k-iso", raw_event("iso", '"2024-05-01T10:00:00"'), "bad_timestamp"
        ),
        Case(
            "timestamp far in the future",
            "events",
            b"H-future",
            orjson.dumps({**event("future", "H-future"), "ts": 4_000_000_000_000}),
            "clamped",
            "H-future",
            "future",
        ),
        Case(
            "unknown item id",
            "events",
            b"H-unknown",
            orjson.dumps(event("unknown", "H-unknown", item="NOPE")),
            "unknown_item",
        ),
        Case(
            "enormous review text",
            "events",
            b"k-text",
            orjson.dumps(event("longtext", "H", etype="review", text="y" * (MAX_TEXT_CHARS + 1))),
            "text_too_long",
        ),
        Case(
            "empty review text",
            "events",
            b"H-empty",
            orjson.dumps(event("empty", "H-empty", etype="review", text="", rating=4)),
            "accepted",
            "H-empty",
            "empty",
        ),
        Case(
            "rating as a string",
            "events",
            b"k-rating",
            orjson.dumps(event("r", "H", etype="review", rating="5")),
            "wrong_type",
        ),
        Case("null value", "events", b"k-null", None, "missing_field"),
        Case("empty value", "events", b"k-empty", b"", "not_json"),
        Case("JSON array", "events", b"k-array", b"[1, 2, 3]", "not_object"),
        Case(
            "control characters in a user id",
            "events",
            b"k-ctl",
            orjson.dumps(event("ctl", "H\x00\x1b")),
            "invalid_value",
        ),
        Case(
            "user id of 10k characters",
            "events",
            b"k-longid",
            orjson.dumps(event("long", "U" * 10_000)),
            "invalid_value",
        ),
        Case(
            "unknown event type",
            "events",
            b"k-type",
            orjson.dumps(event("t", "H", etype="teleport")),
            "unknown_event_type",
        ),
        Case(
            "impression of 100,000 items",
            "events",
            b"k-imp-huge",
            orjson.dumps(impression("imp-huge", "H", [f"I{n}" for n in range(100_000)])),
            "too_large",
        ),
        Case(
            "impression of more items than XREC_MAX_IMPRESSION_ITEMS",
            "events",
            b"k-imp-many",
            orjson.dumps(impression("imp-many", "H", [f"I{n}" for n in range(101)])),
            "too_many_items",
        ),
        Case(
            "impression showing one item twice",
            "events",
            b"k-imp-twice",
            orjson.dumps(impression("imp-twice", "H", ["I1", "I2", "I1"])),
            "invalid_value",
        ),
        Case(
            "impression of an unknown item",
            "events",
            b"H-imp-unknown",
            orjson.dumps(impression("imp-unknown", "H-imp-unknown", ["I1", "NOPE"])),
            "unknown_item",
        ),
        Case(
            "impression with a position as a string",
            "events",
            b"k-imp-pos",
            orjson.dumps({**impression("imp-pos", "H", ["I1", "I2"]), "positions": [0, "1"]}),
            "invalid_value",
        ),
        Case(
            "impression of catalog items",
            "events",
            b"H-imp",
            orjson.dumps(impression("imp-ok", "H-imp", ["I1", "I2", "I3"])),
            "accepted",
            "H-imp",
            "imp-ok",
        ),
        Case(
            "item vector of the wrong size",
            "items",
            b"X-dim",
            orjson.dumps({"item_id": "X-dim", "title": "t", "vector": vec[:-1]}),
            "bad_vector",
        ),
        Case(
            "item vector with a string in it",
            "items",
            b"X-str",
            orjson.dumps({"item_id": "X-str", "title": "t", "vector": [*vec[:-1], "1"]}),
            "bad_vector",
        ),
        Case(
            "item vector of zeros",
            "items",
            b"X-zero",
            orjson.dumps({"item_id": "X-zero", "title": "t", "vector": [0.0] * DIM}),
            "bad_vector",
        ),
        Case(
            "item with an enormous body",
            "items",
            b"X-body",
            orjson.dumps({"item_id": "X-body", "title": "t", "body": "z" * (MAX_TEXT_CHARS + 1), "vector": vec}),
            "text_too_long",
        ),
        Case(
            "item with neither text nor vector",
            "items",
            b"X-empty",
            orjson.dumps({"item_id": "X-empty"}),
            "missing_field",
        ),
        Case(
            "huge item",
            "items",
            b"X-huge",
            orjson.dumps({"item_id": "X-huge", "title": "t", "tags": ["a" * 200] * 600, "vector": vec}),
            "too_large",
        ),
        Case(
            "item without a text on a worker without an encoder",
            "items",
            b"X-text",
            orjson.dumps({"item_id": "X-text", "title": "only text"}),
            "bad_vector",
        ),
        Case(
            "unknown control command",
            "control",
            b"k-cmd",
            orjson.dumps({"type": "drop_tables", "user_id": "H"}),
            "unknown_command",
        ),
    ]
    return cases


def start_hostile_worker(env: WorkerEnv) -> WorkerProcess:
    env.env.update(XREC_MAX_RECORD_BYTES=str(MAX_RECORD_BYTES), XREC_MAX_TEXT_CHARS=str(MAX_TEXT_CHARS))
    worker = env.start_worker(*WORKER_ARGS)
    index_items(env, worker, make_items())
    return worker


def dlq_records(env: WorkerEnv, expected: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    msgs = env.consume(env.topics["dlq"], lambda ms: len(ms) >= expected, timeout_s=timeout_s)
    return [{**orjson.loads(m.value), "_key": m.key} for m in msgs]


def test_every_hostile_record_has_its_defined_outcome_and_the_good_ones_around_it_are_processed(
    worker_env: WorkerEnv,
) -> None:
    env = worker_env
    worker = start_hostile_worker(env)
    cases = hostile_cases()
    good_ids: list[str] = []
    duplicate = event("G-dup", "G", item="I3")
    env.produce_json(env.topics["events"], "user_id", [duplicate])
    for n, case in enumerate(cases):
        before = event(f"G-{n}a", "G", item=f"I{n % N_ITEMS}")
        after = event(f"G-{n}b", "G", item=f"I{(n + 7) % N_ITEMS}")
        good_ids += [before["event_id"], after["event_id"]]
        env.produce_json(env.topics["events"], "user_id", [before])
        env.produce(env.topics[case.topic], [(case.key, case.value)])
        env.produce_json(env.topics["events"], "user_id", [after])
    env.produce_json(env.topics["events"], "user_id", [duplicate])  # the same event id again
    refused = [c for c in cases if c.outcome not in ("accepted", "clamped", "duplicate")]

    dlq = dlq_records(env, len(refused), timeout_s=90)
    by_key = {r["_key"]: r for r in dlq}
    outcomes = {c.name: by_key.get(c.key, {}).get("error_class", "no DLQ record") for c in refused}
    wanted = {c.name: c.outcome for c in refused}
    accepted = [c for c in cases if c.outcome in ("accepted", "clamped")]
    stored: dict[str, Any] = {}

    def all_good_events_stored() -> bool:
        stored.update(stored_profiles(env.bootstrap, env))
        return _has_all(stored, "G", [*good_ids, "G-dup"]) and all(
            _has_all(stored, c.user or "", [c.event_id or ""]) for c in accepted
        )

    wait_for("the good and accepted events in the profiles", all_good_events_stored, timeout_s=60, worker=worker)
    for c in accepted:
        assert c.user is not None and c.event_id is not None
        outcomes[c.name] = "accepted" if _has_all(stored, c.user, [c.event_id]) else "missing"
        wanted[c.name] = "accepted"
    future = stored["H-future"]
    duplicates = metric_sum(worker, "xrec_events_total", outcome="duplicate")
    print(f"\n[hostile input] {len(cases)} cases, {len(refused)} dead-lettered, {len(accepted)} accepted:")
    for c in cases:
        note = " (its timestamp clamped to the worker's clock + 60 s)" if c.outcome == "clamped" else ""
        print(f"  {c.name:<52} -> {outcomes.get(c.name)}{note}")
    print(f"  duplicated event id -> absorbed ({duplicates:.0f} duplicate), good events around them: {len(good_ids)}")

    assert outcomes == wanted
    assert len(dlq) == len(refused), [r["error_class"] for r in dlq]
    assert future.last_ts <= _now() + 60_000, "a timestamp far in the future is clamped to the worker's clock"
    assert duplicates == 1 and stored["G"].events == len(good_ids) + 1
    huge = by_key[b"k-huge"]
    assert huge["value_truncated"] and huge["value_size"] > MAX_RECORD_BYTES and huge["offset"] is not None
    assert by_key[b"k-utf8"]["value_base64"] and by_key[b"k-utf8"]["value"] is None
    assert worker.exited() is None and worker.get_json("/healthz")[0] == 200
    msgs = env.consume(
        env.topics["recommendations"],
        lambda ms: any(x and x["trigger_event_id"] == good_ids[-1] for x in lists_for(ms, "G")),
        timeout_s=30,
    )
    assert any(x and x["trigger_event_id"] == good_ids[-1] for x in lists_for(msgs, "G"))
    events_dlq = sum(1 for c in refused if c.topic == "events")
    assert metric_sum(worker, "xrec_events_total", outcome="dlq") == events_dlq
    assert metric_sum(worker, "xrec_items_total", outcome="dlq") == sum(1 for c in refused if c.topic == "items")
    assert metric_sum(worker, "xrec_dlq_records_total") == len(refused)


def _has_all(stored: dict[str, Any], user: str, event_ids: list[str]) -> bool:
    profile = stored.get(user)
    return profile is not None and all(event_fingerprint(e) in profile.event_ids for e in event_ids)


# --- soak ----------------------------------------------------------------------------------------

BAD_KINDS = {
    "not_json": lambda i: b'{"event_id": "bad-%d", "user_id": ' % i,
    "invalid_utf8": lambda i: b'{"event_id":"bad-%d","user_id":"\xc3\x28","item_id":"I0","type":"click","ts":1}' % i,
    "not_object": lambda i: b"[%d]" % i,
    "missing_field": lambda i: orjson.dumps({"event_id": f"bad-{i}", "user_id": "S0", "type": "click", "ts": _now()}),
    "unknown_event_type": lambda i: orjson.dumps(event(f"bad-{i}", "S0", etype="poke")),
    "bad_timestamp": lambda i: orjson.dumps({**event(f"bad-{i}", "S0"), "ts": 1_000}),
    "text_too_long": lambda i: orjson.dumps(event(f"bad-{i}", "S0", etype="review", text="w" * (MAX_TEXT_CHARS + 5))),
    "too_large": lambda i: orjson.dumps({**event(f"bad-{i}", "S0"), "pad": "p" * MAX_RECORD_BYTES}),
    "unknown_item": lambda i: orjson.dumps(event(f"bad-{i}", f"S{i % 50}", item=f"NOPE-{i}")),
}


def test_a_soak_with_ten_percent_bad_records_accounts_for_every_record_exactly(worker_env: WorkerEnv) -> None:
    env = worker_env
    worker = start_hostile_worker(env)
    rng = random.Random(42)
    records: list[tuple[bytes | None, bytes | None]] = []
    sent_good: list[dict[str, Any]] = []
    expected: Counter[str] = Counter()
    bad_reasons: Counter[str] = Counter()
    for i in range(3000):
        roll = rng.random()
        if roll < 0.10:
            reason = rng.choice(sorted(BAD_KINDS))
            value = BAD_KINDS[reason](i)
            user = orjson.loads(value).get("user_id") if reason == "unknown_item" else None
            records.append(((user or f"k{i}").encode(), value))
            expected["dlq"] += 1
            bad_reasons[reason] += 1
        elif roll < 0.15 and sent_good:
            again = rng.choice(sent_good)  # a producer retry: the same event once more
            records.append((again["user_id"].encode(), orjson.dumps(again)))
            expected["duplicate"] += 1
        else:
            e = event(
                f"S-{i}",
                f"S{rng.randrange(50)}",
                item=f"I{rng.randrange(N_ITEMS)}",
                etype=rng.choice(["click", "view", "like", "skip"]),
            )
            records.append((e["user_id"].encode(), orjson.dumps(e)))
            sent_good.append(e)
            expected["processed"] += 1
    started = time.monotonic()
    env.produce(env.topics["events"], records)  # keyed by user: one partition per user, in order

    def counted() -> dict[str, float]:
        return {o: metric_sum(worker, "xrec_events_total", outcome=o) for o in ("processed", "duplicate", "dlq")}

    wait_for(
        "every record accounted for", lambda: sum(counted().values()) >= len(records), timeout_s=180, worker=worker
    )
    elapsed = time.monotonic() - started
    time.sleep(2)  # nothing more may arrive: a second count must not grow
    got = counted()
    dlq = [r for r in dlq_records(env, expected["dlq"], timeout_s=60) if r["source_topic"] == env.topics["events"]]
    dlq_reasons = Counter(r["error_class"] for r in dlq)
    print(
        f"\n[soak] in={len(records)}, processed={got['processed']:.0f}, dlq={got['dlq']:.0f}, "
        f"duplicates={got['duplicate']:.0f}, sum={sum(got.values()):.0f}; DLQ topic records={len(dlq)}; "
        f"bad by reason {dict(sorted(bad_reasons.items()))}; all counted {elapsed:.1f}s after the first was sent"
    )
    assert sum(got.values()) == len(records)
    assert got == {k: float(v) for k, v in expected.items()}
    assert len(dlq) == expected["dlq"] and dlq_reasons == bad_reasons
    assert metric_sum(worker, "xrec_dlq_records_total") == expected["dlq"]
    assert worker.exited() is None
