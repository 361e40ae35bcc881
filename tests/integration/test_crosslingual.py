"""Meaning crosses languages: the worker with the real multilingual encoder, on the demo catalog.

A user who clicks German football items should get football items in other languages, ranked above
the catalog's unrelated topics. Needs the default model (``xrec model prepare``, done by ``./run``).
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.integration.conftest import WorkerEnv, lists_for
from xrec.config import Settings
from xrec.demo.catalog import build_catalog
from xrec.modelhub import DEFAULT_MODEL_ID, default_model_dir


@pytest.fixture(scope="module")
def model_ready() -> None:
    path = default_model_dir(Settings.from_env())
    if not path.exists():
        pytest.fail(f"{DEFAULT_MODEL_ID} is not prepared in {path}: run `xrec model prepare` (./run test does)")


def test_clicks_in_one_language_bring_the_same_topic_in_other_languages(
    worker_env: WorkerEnv, model_ready: None
) -> None:
    catalog = build_catalog(items_per_topic=6)
    worker = worker_env.start_worker()
    worker_env.produce_json(worker_env.topics["items"], "item_id", [item.record() for item in catalog])
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and worker.metric("xrec_items_indexed") < len(catalog):
        time.sleep(0.5)
    assert worker.metric("xrec_items_indexed") == len(catalog), worker.log_tail()

    by_id = {item.item_id: item for item in catalog}
    clicked = [i.item_id for i in catalog if i.topic == "football" and i.lang == "de"][:5]
    now = int(time.time() * 1000)
    events = [
        {"event_id": f"x-{n}", "user_id": "leser", "item_id": item_id, "type": "click", "ts": now + n}
        for n, item_id in enumerate(clicked)
    ]
    worker_env.produce_json(worker_env.topics["events"], "user_id", events)
    last = events[-1]["event_id"]
    msgs = worker_env.consume(
        worker_env.topics["recommendations"],
        lambda ms: any(lst and lst["trigger_event_id"] == last for lst in lists_for(ms, "leser")),
        timeout_s=120,
    )
    [lst] = [x for x in lists_for(msgs, "leser") if x and x["trigger_event_id"] == last]
    items = [by_id[i["item_id"]] for i in lst["items"]]
    print("list for a German football reader:", [(i.topic, i.lang) for i in items])

    assert not set(clicked) & {i.item_id for i in items}, "clicked items came back"
    football = [i for i in items if i.topic == "football"]
    other_langs = Counter(i.lang for i in football if i.lang != "de")
    assert len(other_langs) >= 2, f"football items in other languages: {dict(other_langs)}"
    ranks = {i.item_id: r for r, i in enumerate(items)}
    first_unrelated = min((ranks[i.item_id] for i in items if i.topic != "football"), default=len(items))
    foreign_football = [ranks[i.item_id] for i in football if i.lang != "de"]
    assert sum(r < first_unrelated for r in foreign_football) >= 2, (
        "unrelated topics outrank the foreign football items"
    )
