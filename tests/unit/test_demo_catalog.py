"""The demo catalog and its simulated readers: enough items, every topic in every language (three of
them non-Latin), unique ids and texts, records that pass the wire contract, and sessions that read
one topic in one language."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import orjson
import pytest

from xrec.demo.catalog import LANGUAGES, TOPICS, build_catalog, max_items_per_topic, read_texts
from xrec.demo.simulate import REVIEW_TEMPLATES, TOPIC_WORDS, make_users, play_order, user_session
from xrec.events import Limits, parse_event, parse_item

NOW = 1_763_900_000_000


@pytest.fixture(scope="module")
def catalog():  # type: ignore[no-untyped-def]
    return build_catalog(now_ms=NOW)


def _script(text: str) -> str:
    """The Unicode script most of a text's letters are written in, as a coarse name."""
    scripts: Counter[str] = Counter()
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            scripts[next((s for s in ("CJK", "HIRAGANA", "KATAKANA", "CYRILLIC", "LATIN") if s in name), "OTHER")] += 1
    if scripts["HIRAGANA"] + scripts["KATAKANA"] + scripts["CJK"] > scripts["LATIN"]:
        return "JAPANESE" if scripts["HIRAGANA"] + scripts["KATAKANA"] else "CJK"
    return scripts.most_common(1)[0][0]


def test_the_catalog_has_at_least_300_items_in_at_least_six_languages(catalog) -> None:  # type: ignore[no-untyped-def]
    assert len(catalog) >= 300
    assert len({i.lang for i in catalog}) >= 6
    assert 6 <= len(TOPICS) <= 8


def test_every_topic_exists_in_every_language_with_the_same_number_of_items(catalog) -> None:  # type: ignore[no-untyped-def]
    counts = Counter((i.topic, i.lang) for i in catalog)
    assert set(counts) == {(t, lang) for t in TOPICS for lang in LANGUAGES}
    assert len(set(counts.values())) == 1
    assert max_items_per_topic() == next(iter(counts.values()))


def test_japanese_chinese_and_russian_items_are_written_in_their_own_scripts(catalog) -> None:  # type: ignore[no-untyped-def]
    expected = {"ja": "JAPANESE", "zh": "CJK", "ru": "CYRILLIC"}
    for item in catalog:
        assert _script(item.body) == expected.get(item.lang, "LATIN"), item.item_id


def test_item_ids_are_unique_and_name_topic_language_and_number(catalog) -> None:  # type: ignore[no-untyped-def]
    ids = [i.item_id for i in catalog]
    assert len(set(ids)) == len(ids)
    for item in catalog:
        match = re.fullmatch(r"demo-([a-z]+)-([a-z]{2})-(\d+)", item.item_id)
        assert match is not None and match.group(1, 2) == (item.topic, item.lang)


def test_no_headline_or_body_is_written_twice(catalog) -> None:  # type: ignore[no-untyped-def]
    assert len({i.title for i in catalog}) == len(catalog)
    assert len({i.body for i in catalog}) == len(catalog)


def test_every_item_record_passes_the_items_wire_contract_with_its_topic_as_category(catalog) -> None:  # type: ignore[no-untyped-def]
    for item in catalog:
        parsed = parse_item(orjson.dumps(item.record()), Limits())
        assert parsed.item_id == item.item_id  # type: ignore[union-attr]
        assert parsed.category == item.topic and parsed.lang == item.lang  # type: ignore[union-attr]
        assert parsed.ts <= NOW


def test_items_per_topic_trims_every_topic_and_language_alike() -> None:
    small = build_catalog(2, now_ms=NOW)
    assert len(small) == 2 * len(TOPICS) * len(LANGUAGES)
    assert {i.item_id.rsplit("-", 1)[1] for i in small} == {"1", "2"}
    with pytest.raises(ValueError):
        build_catalog(0)


def test_the_catalog_file_reader_refuses_a_missing_header_and_an_unknown_language() -> None:
    with pytest.raises(ValueError, match="header"):
        read_texts(["football\ten\tTitle\tBody"])
    with pytest.raises(ValueError, match="unknown"):
        read_texts(["topic\tlang\ttitle\tbody", "football\txx\tTitle\tBody"])
    with pytest.raises(ValueError, match="cells"):
        read_texts(["topic\tlang\ttitle\tbody", "football\ten\tTitle only"])


def test_two_readers_of_one_language_follow_different_topics() -> None:
    users = make_users(14)
    assert len({u.user_id for u in users}) == 14
    by_lang: dict[str, list[str]] = {}
    for user in users:
        by_lang.setdefault(user.lang, []).append(user.topic)
    assert set(by_lang) == set(LANGUAGES)
    assert all(len(topics) == 2 and topics[0] != topics[1] for topics in by_lang.values())


def test_a_session_reads_its_topic_in_its_language_reviews_in_it_and_dislikes_another_topic(catalog) -> None:  # type: ignore[no-untyped-def]
    import random

    items = {i.item_id: i for i in catalog}
    for user in make_users(7):
        session = user_session(user, catalog, random.Random(1))
        types = Counter(e.type for e in session)
        assert types["view"] >= 2 and types["click"] >= 2 and types["like"] == 1
        assert types["review"] == 1 and types["dislike"] == 1
        for event in session:
            item = items[event.item_id]
            assert item.lang == user.lang and event.lang == user.lang
            assert (item.topic == user.topic) == (event.type != "dislike")
        review = next(e for e in session if e.type == "review")
        assert review.rating == 5 and review.text == REVIEW_TEMPLATES[user.lang].format(
            topic=TOPIC_WORDS[user.lang][user.topic]
        )


def test_planned_events_become_contract_events_with_fresh_ids_and_the_send_time(catalog) -> None:  # type: ignore[no-untyped-def]
    plan = play_order(make_users(3), catalog)
    records = [e.record(NOW + n) for n, e in enumerate(plan)]
    parsed = [parse_event(orjson.dumps(r), Limits()) for r in records]
    assert len({p.event_id for p in parsed}) == len(plan)
    assert [p.ts for p in parsed] == [NOW + n for n in range(len(plan))]
    assert [p.user_id for p in parsed[:3]] == ["u01", "u02", "u03"]  # round-robin between readers


def test_review_words_exist_for_every_language_and_topic() -> None:
    assert set(REVIEW_TEMPLATES) == set(LANGUAGES) == set(TOPIC_WORDS)
    assert all(set(words) == set(TOPICS) for words in TOPIC_WORDS.values())
