"""``xrec eval crosslingual`` on a small synthetic catalog: readers, judging, and the served engine in the loop."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from xrec.config import Settings
from xrec.errors import CommandError
from xrec.eval import crosslingual as xl
from xrec.eval.topic_catalog import TopicCatalog, TopicItem, topic_tsv

DIM = 16
LANGS = ("en", "zh")
TOPICS = ("sport", "food", "tech", "music")


def catalog(per_cell: int = 15) -> tuple[TopicCatalog, np.ndarray]:
    """Each news in both languages (a shared group); vectors: shared + language + topic directions."""
    rng = np.random.default_rng(0)
    items, vectors = [], []
    for t, topic in enumerate(TOPICS):
        for n in range(per_cell):
            content = rng.normal(0, 0.05, DIM)
            for li, lang in enumerate(LANGS):
                v = np.zeros(DIM)
                v[0], v[1 + li], v[4 + t] = 1.0, 0.6, 0.35
                v += content + rng.normal(0, 0.01, DIM)
                items.append(TopicItem(f"{topic}{n}@{lang}", lang, topic, topic, f"{topic}{n}", f"t {n}", ""))
                vectors.append(v / np.linalg.norm(v))
    return TopicCatalog("synthetic", "test", items), np.asarray(vectors, np.float32)


def test_readers_are_split_evenly_over_languages_and_read_one_topic_in_one_language() -> None:
    cat, _ = catalog()
    readers = xl.sample_readers(cat.items, 10, 3, seed=1)
    assert Counter(r.lang for r in readers) == {"en": 5, "zh": 5}
    for reader in readers:
        picked = [cat.items[i] for i in reader.clicks]
        assert len(set(reader.clicks)) == 3
        assert {it.lang for it in picked} == {reader.lang}
        assert len({it.category for it in picked}) == 1


def test_a_topic_tsv_is_read_in_the_masakhanews_layout(tmp_path: Path) -> None:
    path = tmp_path / "news.tsv"
    path.write_text("id\tlang\tcategory\theadline\ttext\nx1\tswa\tsports\tMpira\tTimu ilishinda\n", encoding="utf-8")
    [item] = topic_tsv(path).items
    assert (item.item_id, item.lang, item.category, item.text) == ("x1", "swa", "sports", "Mpira. Timu ilishinda")


def test_a_topic_tsv_from_a_spreadsheet_is_read_and_its_broken_lines_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "news.tsv"
    rows = [
        "id\tlang\tcategory\theadline\ttext",
        "x1\tswa\tsports\tMpira\tTimu",
        "x2\tswa\tsports",
        "x3\ten\tsports\tBall\tWon",
    ]
    path.write_bytes("\r\n".join(rows).encode("utf-8-sig"))  # a byte-order mark and Windows line ends
    with caplog.at_level(logging.WARNING):
        items = topic_tsv(path).items
    assert [(it.item_id, it.text) for it in items] == [("x1", "Mpira. Timu"), ("x3", "Ball. Won")]
    assert "left out 1 lines" in caplog.text and "line 3" in caplog.text


def test_a_topic_tsv_with_an_id_twice_is_refused_with_the_id(tmp_path: Path) -> None:
    path = tmp_path / "news.tsv"
    path.write_text("id\tlang\tcategory\theadline\ttext\nx1\ten\ta\tA\tB\nx1\tfr\ta\tA\tB\n", encoding="utf-8")
    with pytest.raises(CommandError, match="'x1'"):
        topic_tsv(path)


def test_the_served_lists_cross_languages_on_topic_where_raw_cosine_stays_home(tmp_path: Path) -> None:
    cat, vectors = catalog()
    readers = xl.sample_readers(cat.items, 20, 3, seed=2)
    settings = Settings(store_path=str(tmp_path / "store"), language_detection="off")
    judged = asyncio.run(xl.replay(settings, cat, vectors, readers, 3))
    summary = xl.summarize(judged, readers, cat, rounds=50, seed=0)
    systems = summary["systems"]
    assert systems["raw mean-of-history"]["other_language_share"]["mean"] < 0.05  # language identity wins
    assert systems["xrec"]["other_language_share"]["mean"] >= 0.3
    assert systems["xrec"]["category_p10"]["mean"] >= 0.9
    assert set(summary["per_language"]) == set(LANGS)
    # The clicked news' own translations are left out of every judged list.
    for system in xl.SYSTEMS:
        for reader, ranked in zip(readers, judged.lists[system], strict=True):
            groups = {cat.items[i].group for i in reader.clicks}
            assert not {cat.items[j].group for j in ranked} & groups


def test_the_command_prints_a_table_and_refuses_a_missing_catalog(tmp_path: Path) -> None:
    args = argparse.Namespace(
        data_dir=str(tmp_path / "nowhere"), catalog="", readers=4, clicks=3, seed=0, bootstrap=10, plot=""
    )
    with pytest.raises(xl.CommandError, match="not found"):
        xl.run(args)
