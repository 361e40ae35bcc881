"""Two A/B variants in one real worker: every list says its user's variant, each variant ranks with its
own settings, the metrics count lists by variant, and a user keeps their variant across a restart."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from tests.integration.conftest import WorkerEnv
from tests.integration.test_faults import N_ITEMS, WORKER_ARGS, index_items, make_items, metric_sum, wait_for
from xrec.config import Settings
from xrec.variants import Variants

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SPEC = "A=50; B=50 list_length=3"
USERS = [f"V{n}" for n in range(24)]


def clicks(round_: int) -> list[dict[str, Any]]:
    now = int(time.time() * 1000)
    return [
        {"event_id": f"{u}-{round_}", "user_id": u, "item_id": f"I{(n + round_) % N_ITEMS}", "type": "click", "ts": now}
        for n, u in enumerate(USERS)
    ]


def latest_lists(env: WorkerEnv, round_: int) -> dict[str, dict[str, Any]]:
    wanted = {f"{u}-{round_}" for u in USERS}

    def answered(msgs: list[Any]) -> bool:
        return wanted <= {orjson.loads(m.value)["trigger_event_id"] for m in msgs if m.value}

    msgs = env.consume(env.topics["recommendations"], answered, timeout_s=60)
    lists = [orjson.loads(m.value) for m in msgs if m.value]
    return {x["user_id"]: x for x in lists if x["trigger_event_id"] in wanted}


def test_two_variants_in_one_worker_and_users_keep_their_variant_across_a_restart(worker_env: WorkerEnv) -> None:
    env = worker_env
    env.env["XREC_VARIANTS"] = SPEC
    expected = {u: Variants(Settings(variants=SPEC)).of(u) for u in USERS}
    assert set(expected.values()) == {"A", "B"}
    worker = env.start_worker(*WORKER_ARGS)
    index_items(env, worker, make_items())
    env.produce_json(env.topics["events"], "user_id", clicks(0))
    first = latest_lists(env, 0)
    assert {u: x["variant"] for u, x in first.items()} == expected
    assert all(len(x["items"]) == (3 if x["variant"] == "B" else 10) for x in first.values())
    assert all(x["list_id"] for x in first.values())
    wait_for("lists counted", lambda: metric_sum(worker, "xrec_lists_published_total") >= len(USERS), 30, worker)
    for variant in ("A", "B"):
        counted = metric_sum(worker, "xrec_lists_published_total", variant=variant)
        assert counted == sum(1 for v in expected.values() if v == variant)
        assert metric_sum(worker, "xrec_variant_events_total", variant=variant, type="click") == counted

    assert worker.stop() == 0
    worker = env.start_worker(*WORKER_ARGS)
    env.produce_json(env.topics["events"], "user_id", clicks(1))
    again = latest_lists(env, 1)
    assert {u: x["variant"] for u, x in again.items()} == expected
