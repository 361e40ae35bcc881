"""Meaning crosses languages through the real worker, broker and encoder (the neutral space, end to end).

The catalogs are the project's own: the demo catalog (six topics written in seven languages) and the
multilingual sample (twelve sentences translated into eight languages). A reader clicks a few items of
one topic in one language; the list read back from the recommendations topic must hold that topic in
other languages, which an encoder left alone does not give (its language identity outweighs the
subject). Needs the default model (``xrec model prepare``, done by ``./run``).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tests.integration.conftest import WorkerEnv, WorkerProcess, lists_for
from xrec.demo.catalog import build_catalog
from xrec.store.local_server import LocalQdrantServer

SAMPLE = Path(__file__).resolve().parents[2] / "xrec" / "data" / "multilingual_sample.tsv"


def index(worker_env: WorkerEnv, worker: WorkerProcess, records: list[dict[str, Any]]) -> None:
    worker_env.produce_json(worker_env.topics["items"], "item_id", records)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and worker.metrics().sum("xrec_items_indexed") < len(records):
        time.sleep(0.5)
    assert worker.metrics().sum("xrec_items_indexed") == len(records), worker.log_tail()


def read_list(worker_env: WorkerEnv, user: str, clicked: list[str]) -> list[str]:
    now = int(time.time() * 1000)
    events = [
        {"event_id": f"{user}-{n}", "user_id": user, "item_id": item_id, "type": "click", "ts": now + n}
        for n, item_id in enumerate(clicked)
    ]
    worker_env.produce_json(worker_env.topics["events"], "user_id", events)
    last = events[-1]["event_id"]
    msgs = worker_env.consume(
        worker_env.topics["recommendations"],
        lambda ms: any(lst and lst["trigger_event_id"] == last for lst in lists_for(ms, user)),
        timeout_s=120,
    )
    [lst] = [x for x in lists_for(msgs, user) if x and x["trigger_event_id"] == last]
    return [i["item_id"] for i in lst["items"]]


def sample_records() -> list[dict[str, Any]]:
    """The multilingual sample as items: each sentence in each language, its group as the category."""
    rows = [line.split("\t") for line in SAMPLE.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    return [
        {"item_id": f"sample-{group}-{lang}", "title": text.strip(), "lang": lang, "category": group}
        for group, lang, text in rows
    ]


def test_a_reader_of_one_language_gets_the_topic_in_at_least_three_other_languages(
    worker_env: WorkerEnv, model_ready: None
) -> None:
    catalog = build_catalog()
    worker = worker_env.start_worker()
    index(worker_env, worker, [item.record() for item in catalog])
    by_id = {item.item_id: item for item in catalog}
    clicked = [i.item_id for i in catalog if i.topic == "football" and i.lang == "de"][:3]
    items = [by_id[i] for i in read_list(worker_env, "leser", clicked)]
    print("list for a German football reader:", [(i.topic, i.lang) for i in items])

    assert not set(clicked) & {i.item_id for i in items}, "clicked items came back"
    football = [i for i in items if i.topic == "football"]
    assert len(football) >= 0.8 * len(items), f"off-topic items: {[(i.topic, i.lang) for i in items]}"
    other_langs = Counter(i.lang for i in football if i.lang != "de")
    assert len(other_langs) >= 3, f"football items in other languages: {dict(other_langs)}"


def test_a_bilingual_catalog_is_read_across_the_language_boundary(worker_env: WorkerEnv, model_ready: None) -> None:
    """English and Mandarin only: the demo's items in both plus the sample's sentences in both (120 items)."""
    demo = [i.record() for i in build_catalog() if i.lang in ("en", "zh")]
    sample = [r for r in sample_records() if r["lang"] in ("en", "zh")]
    catalog = demo + sample
    topic = {r["item_id"]: r["category"] for r in catalog}
    lang = {r["item_id"]: r["lang"] for r in catalog}
    worker = worker_env.start_worker()
    index(worker_env, worker, catalog)

    for reader_lang in ("zh", "en"):
        clicked = [r["item_id"] for r in demo if r["category"] == "astronomy" and r["lang"] == reader_lang][:3]
        items = read_list(worker_env, f"reader-{reader_lang}", clicked)
        print(f"list for a {reader_lang} astronomy reader:", [(topic[i], lang[i]) for i in items])
        on_topic = [i for i in items if topic[i] == "astronomy"]
        crossing = [i for i in on_topic if lang[i] != reader_lang]
        assert len(on_topic) >= 0.8 * len(items), "the list left the reader's topic"
        assert len(crossing) >= 0.3 * len(items), "the list did not cross into the other language"

    # A sentence's own translation is the nearest item of the other language.
    [first] = read_list(worker_env, "reader-doctor", ["sample-doctor-zh"])[:1]
    assert first == "sample-doctor-en", f"{first} came before the translation"


def test_a_missing_wrong_or_unknown_lang_is_resolved_and_never_stops_the_worker(
    worker_env: WorkerEnv, model_ready: None
) -> None:
    catalog = [i.record() for i in build_catalog()]
    zh_text = {
        "title": "天文學家在銀河系邊緣發現了一顆新的系外行星",
        "body": "研究團隊使用太空望遠鏡觀測了三年，確認這顆行星的大小與地球相近，並且位於宜居帶之內。",
        "category": "astronomy",
    }
    odd: list[dict[str, Any]] = [
        {**zh_text, "item_id": "no-lang", "lang": None},  # identified from the text
        {**zh_text, "item_id": "wrong-lang", "lang": "en"},  # corrected: the text is Mandarin
        {**zh_text, "item_id": "unknown-tag", "lang": "x-klingon"},  # a tag nobody knows: kept as sent
        {**zh_text, "item_id": "bad-tag", "lang": "<script>"},  # not a language tag: DLQ
    ]
    worker = worker_env.start_worker()
    worker_env.produce_json(worker_env.topics["items"], "item_id", catalog + odd)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and worker.metrics().sum("xrec_items_indexed") < len(catalog) + 3:
        time.sleep(0.5)
    assert worker.metrics().sum("xrec_items_indexed") == len(catalog) + 3, worker.log_tail()
    review = {
        "event_id": "r1",
        "user_id": "critic",
        "item_id": "no-lang",
        "type": "review",
        "ts": int(time.time() * 1000),
    }
    reviews = [
        {**review, "text": "這篇文章寫得很好，我學到了很多關於天文學的知識。", "rating": 5},  # no lang: identified
        {**review, "event_id": "r2", "item_id": "wrong-lang", "lang": "fr", "text": "Great article!", "rating": 4},
    ]
    worker_env.produce_json(worker_env.topics["events"], "user_id", reviews)
    msgs = worker_env.consume(
        worker_env.topics["recommendations"],
        lambda ms: any(lst and lst["trigger_event_id"] == "r2" for lst in lists_for(ms, "critic")),
        timeout_s=120,
    )
    assert any(lst and lst["trigger_event_id"] == "r2" for lst in lists_for(msgs, "critic"))
    metrics = worker.metrics()

    def resolved(kind: str, source: str) -> float:
        return metrics.sum("xrec_languages_resolved_total", kind=kind, source=source)

    assert resolved("item", "identified") == 1
    assert resolved("item", "corrected") == 1
    assert resolved("item", "label") == len(catalog) + 1
    assert resolved("review", "identified") == 1
    assert worker.exited() is None
    dlq = worker_env.consume(worker_env.topics["dlq"], lambda ms: len(ms) >= 1, timeout_s=30)
    assert [m.key for m in dlq] == [b"bad-tag"]


def test_a_restarted_worker_ranks_in_the_neutral_space_it_had_without_indexing_again(worker_env: WorkerEnv) -> None:
    """The statistics come back from the compacted topic: no item is read again after the restart, yet the
    first list crosses languages (with no statistics the space would be off and lists would not cross)."""
    from xrec.space import CountedStats

    dim = 64
    rng = np.random.default_rng(3)
    langs, topics = ("en", "zh"), 4
    catalog = []
    for t in range(topics):
        for li, lang in enumerate(langs):
            for n in range(40):
                v = np.zeros(dim)
                v[0], v[1 + li], v[4 + t] = 1.0, 0.6, 0.35  # shared, language, topic
                v += rng.normal(0, 0.05, dim)
                catalog.append({"item_id": f"{lang}-{t}-{n}", "title": "x", "lang": lang, "vector": v.tolist()})
    args = ("--no-encoder", "--dim", str(dim))
    worker = worker_env.start_worker(*args)
    index(worker_env, worker, catalog)
    stats_msgs = worker_env.consume(worker_env.topics["language_stats"], lambda ms: len(ms) >= 1, timeout_s=30)
    latest = CountedStats.from_bytes(stats_msgs[-1].value)
    assert latest.stats.counts == {"en": 160, "zh": 160} and latest.through == len(catalog) - 1
    worker.stop()

    again = worker_env.start_worker(*args)
    items = read_list(worker_env, "returning", ["zh-0-0", "zh-0-1", "zh-0-2"])
    assert again.metrics().sum("xrec_items_total") == 0, "the restarted worker read items again"
    assert all(i.split("-")[1] == "0" for i in items), items
    assert sum(i.startswith("en-") for i in items) >= 2, items  # as encoded, the list stays in Mandarin


def test_two_workers_on_one_qdrant_server_encode_each_item_text_once_in_all(
    worker_env: WorkerEnv, model_ready: None, qdrant_server: LocalQdrantServer
) -> None:
    """They share the item consumer group of their server's collection: a text is encoded by one of them."""
    worker_env.use_qdrant_server(qdrant_server)
    catalog = [i.record() for i in build_catalog() if i.lang in ("en", "zh")]
    workers = [worker_env.start_worker(store_path=worker_env.tmp / f"store-{w}") for w in range(2)]
    worker_env.produce_json(worker_env.topics["items"], "item_id", catalog)
    deadline = time.monotonic() + 180
    # Whichever of them holds the items partition counts the shared collection after each batch.
    while time.monotonic() < deadline and max(w.metrics().sum("xrec_items_indexed") for w in workers) < len(catalog):
        time.sleep(0.5)
    assert max(w.metrics().sum("xrec_items_indexed") for w in workers) == len(catalog), workers[0].log_tail()
    time.sleep(2)  # a second encoding of any text would show by now
    encoded = [w.metrics().sum("xrec_texts_encoded_total") for w in workers]
    print(f"texts encoded per worker: {encoded} for {len(catalog)} items")
    assert sum(encoded) == len(catalog)
    clicked = [r["item_id"] for r in catalog if r["category"] == "astronomy" and r["lang"] == "zh"][:3]
    items = read_list(worker_env, "reader-zh", clicked)
    assert items, "no list from the workers sharing the server"
