"""Click-through counts across real workers: what one worker counts from its users' impressions and clicks
reaches another through the click-through topic, and a restarted worker goes on from what it had counted."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.conftest import WorkerEnv
from tests.integration.test_faults import N_ITEMS, WORKER_ARGS, index_items, make_items, metric_sum, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

USERS = [f"C{n}" for n in range(10)]
SHOWN = ["I1", "I2", "I3", "I4"]


def impressions_and_clicks() -> list[dict[str, Any]]:
    """Each user is shown the same four items and takes the first; I3 is passed over by everyone."""
    now = int(time.time() * 1000) - 60_000
    out: list[dict[str, Any]] = []
    for n, u in enumerate(USERS):
        out += [
            {"event_id": f"{u}-imp", "user_id": u, "type": "impression", "item_ids": SHOWN, "ts": now + n},
            {"event_id": f"{u}-c", "user_id": u, "item_id": "I1", "type": "click", "ts": now + n},
        ]
    return out


def test_click_through_counts_reach_another_worker_and_survive_a_restart(worker_env: WorkerEnv) -> None:
    env = worker_env
    first = env.start_worker(*WORKER_ARGS)
    index_items(env, first, make_items())
    assert first.get_json("/click-through/I1")[1]["rate"] is None  # no impression yet
    env.produce_json(env.topics["events"], "user_id", impressions_and_clicks())

    def counted() -> bool:
        body = first.get_json("/click-through/I1")[1]
        return body["impressions_here"] >= len(USERS) * 0.99 and body["clicks_here"] >= len(USERS) * 0.99

    wait_for("impressions and clicks counted", counted, 60, first)
    taken, passed = first.get_json("/click-through/I1")[1], first.get_json("/click-through/I3")[1]
    assert taken["lift"] > 0 > passed["lift"] and passed["clicks"] == 0
    status, body = first.get_json(f"/click-through/I{N_ITEMS + 5}")
    assert status == 404 and body["error"] == "not in the catalog"

    second = env.start_worker(*WORKER_ARGS, store_path=env.tmp / "store-2")

    def shared() -> bool:
        body = second.get_json("/click-through/I1")[1]
        return body["impressions"] == pytest.approx(taken["impressions"], rel=0.01) and body["impressions_here"] == 0

    wait_for("the first worker's counts at the second", shared, 60, second)
    assert metric_sum(first, "xrec_shared_state_records_total", state="click_through", direction="published") > 0
    assert metric_sum(second, "xrec_shared_state_records_total", state="click_through", outcome="unreadable") == 0
    assert second.get_json("/click-through/I3")[1]["lift"] == pytest.approx(passed["lift"], abs=0.01)

    assert first.stop() == 0
    first = env.start_worker(*WORKER_ARGS)

    def restored() -> bool:
        body = first.get_json("/click-through/I1")[1]
        return body["impressions_here"] == pytest.approx(taken["impressions_here"], rel=0.01)

    wait_for("the restarted worker's own counts back", restored, 60, first)
    assert first.get_json("/click-through/I1")[1]["clicks_here"] == pytest.approx(taken["clicks_here"], rel=0.01)
