"""The learned ranker across real workers: what one worker learns from its users' impressions and clicks
reaches another through the ranker topic, and a restarted worker goes on from what it had learned."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import WorkerEnv
from tests.integration.test_faults import N_ITEMS, WORKER_ARGS, index_items, make_items, metric_sum, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

USERS = [f"L{n}" for n in range(12)]


def teaching_events() -> list[dict[str, Any]]:
    """Each user clicks an item, is shown four others and takes the third."""
    now = int(time.time() * 1000) - 60_000
    out: list[dict[str, Any]] = []
    for n, u in enumerate(USERS):
        shown = [f"I{(n + k) % N_ITEMS}" for k in range(1, 5)]
        out += [
            {"event_id": f"{u}-c0", "user_id": u, "item_id": f"I{n % N_ITEMS}", "type": "click", "ts": now},
            {"event_id": f"{u}-imp", "user_id": u, "type": "impression", "item_ids": shown, "ts": now + 1},
            {"event_id": f"{u}-c1", "user_id": u, "item_id": shown[2], "type": "click", "ts": now + 2},
        ]
    return out


def test_what_one_worker_learns_reaches_another_and_survives_a_restart(worker_env: WorkerEnv) -> None:
    env = worker_env
    env.env["XREC_VARIANTS"] = "L=100 ranker=learned"
    first = env.start_worker(*WORKER_ARGS)
    index_items(env, first, make_items())
    env.produce_json(env.topics["events"], "user_id", teaching_events())
    wait_for("clicks learned", lambda: metric_sum(first, "xrec_ranker_updates") >= len(USERS), 60, first)
    status, body = first.get_json("/ranker")
    assert status == 200 and body["learned_in_variants"] == ["L"] and body["learning"] == "on"
    learned = np.asarray(body["learned_here"])
    assert np.abs(learned).sum() > 0 and body["weights"] != body["hand_set"]

    second = env.start_worker(*WORKER_ARGS, store_path=env.tmp / "store-2")

    def shared() -> bool:
        seen = np.asarray(second.get_json("/ranker")[1]["learned_elsewhere"])
        return bool(np.allclose(seen, np.asarray(first.get_json("/ranker")[1]["learned_here"])))

    wait_for("the first worker's delta at the second", shared, 60, second)
    assert second.get_json("/ranker")[1]["weights"] == pytest.approx(first.get_json("/ranker")[1]["weights"])

    before = np.asarray(first.get_json("/ranker")[1]["learned_here"])
    assert first.stop() == 0
    first = env.start_worker(*WORKER_ARGS)

    def restored() -> bool:
        return bool(np.allclose(np.asarray(first.get_json("/ranker")[1]["learned_here"]), before))

    wait_for("the restarted worker's own delta back", restored, 60, first)
    assert metric_sum(first, "xrec_ranker_updates") >= len(USERS)
