"""``xrec eval mind`` on a tiny MIND-format fixture written here, with hand-made item vectors.

Items point along topic directions, so which candidate each system should rank first is known
exactly. The replay runs the served engine (``Recommender``, ``UserProfile``, ``score_candidates``)
over a real Qdrant Edge store in a temp dir; only the encoder is replaced by vectors in the on-disk
cache, which is what a warm cache gives the command anyway.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import numpy as np
import orjson
import pytest

from xrec.config import Settings
from xrec.errors import CommandError
from xrec.eval import mind as eval_mind
from xrec.eval.mind_data import (
    SCENARIOS,
    SKIP_NO_CANDIDATE,
    SKIP_NO_CLICK,
    SKIP_NO_HISTORY,
    SKIP_NO_NONCLICK,
    item_key,
    load_news,
    news_of,
    read_behaviors,
    select,
    stable_choice,
)
from xrec.eval.vector_cache import VectorCache, model_key
from xrec.modelhub import checkpoint_fingerprint

DIM = 32
#: nid -> (topic, languages with text)
NEWS = {
    "H1": (0, "zh"),
    "H2": (0, "zh"),
    "H3": (0, "zh"),
    "H4": (1, "zh"),
    "H5": (1, "zh"),
    "H6": (1, "zh"),
    "HX": (2, "en"),  # history item with English text only
    "C1": (0, "zh en"),
    "C2": (1, "zh en"),
    "C3": (2, "zh en"),
    "C4": (3, "zh en"),
    "CM": (-1, "zh en"),  # halfway between topics 0 and 1
    "CE": (3, "en"),  # candidate with English text only
}


def vector(nid: str) -> np.ndarray:
    topic, _ = NEWS[nid]
    v = np.zeros(DIM, np.float32)
    if topic < 0:
        v[0] = v[1] = 1.0
    else:
        v[topic] = 1.0
    v[8 + sorted(NEWS).index(nid)] = 0.15  # a little private direction: items are distinct
    return v / np.linalg.norm(v)


def write_news(folder: Path) -> None:
    en = ["nid\tcategory\tsubcategory\ttitle\tabstract"]
    zh = ["nid\ttitle\tabstract"]
    for nid, (topic, langs) in NEWS.items():
        if "en" in langs.split():
            en.append(f"{nid}\ttopic{topic}\tsub\tEnglish title {nid}\tabout topic {topic}")
        if "zh" in langs.split():
            zh.append(f"{nid}\t中文標題 {nid}\t主題 {topic}")
    (folder / "news_en.tsv").write_text("\n".join(en) + "\n", encoding="utf-8")
    (folder / "news_zh.tsv").write_text("\n".join(zh) + "\n", encoding="utf-8")


def write_behaviors(path: Path, rows: list[tuple[str, str, str, str, str]]) -> Path:
    lines = ["impression_id\tuser_id\ttime\thistory\timpressions"] + ["\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def at(hour: int) -> str:
    return f"11/12/2019 {hour}:00:00 AM"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "mind"
    folder.mkdir()
    write_news(folder)
    return folder


def vectors_for(keys: list[str]) -> dict[str, np.ndarray]:
    return {k: vector(k.split("@")[0]) for k in keys}


def replay(data_dir: Path, behaviors: Path, scenario: str, settings: Settings | None = None) -> eval_mind.ReplayResult:
    catalog = load_news(data_dir)
    impressions = read_behaviors(behaviors)
    sc = SCENARIOS[scenario]
    selection = select(impressions, catalog, sc)
    vectors = vectors_for(eval_mind.needed_items(selection, impressions, catalog, sc))
    settings = settings or Settings(interest_temperature=20.0, trending_weight=0.0)
    return asyncio.run(
        eval_mind.replay(settings, selection, impressions, catalog, sc, vectors, 28 * eval_mind.DAY_MS, 0, True)
    )


def test_impressions_are_read_in_time_order(data_dir: Path) -> None:
    path = write_behaviors(
        data_dir / "b.tsv",
        [("2", "U2", at(11), "H1", "C1-1 C2-0"), ("1", "U1", at(10), "H2", "C1-0 C2-1")],
    )
    assert [imp.impression_id for imp in read_behaviors(path)] == ["1", "2"]


def test_files_as_microsoft_publishes_mind_without_a_header_are_read_too(data_dir: Path, tmp_path: Path) -> None:
    behaviors = tmp_path / "behaviors.tsv"
    behaviors.write_text(f"2\tU2\t{at(11)}\tH1\tC1-1 C2-0\n1\tU1\t{at(10)}\tH2\tC1-0 C2-1\n", encoding="utf-8")
    assert [imp.impression_id for imp in read_behaviors(behaviors)] == ["1", "2"]
    published = tmp_path / "published"
    published.mkdir()
    en = (data_dir / "news_en.tsv").read_text(encoding="utf-8").splitlines()[1:]  # no header, and MIND's url
    (published / "news_en.tsv").write_text("".join(f"{row}\thttps://x\t[]\t[]\n" for row in en), encoding="utf-8")
    (published / "news_zh.tsv").write_text((data_dir / "news_zh.tsv").read_text(encoding="utf-8"), encoding="utf-8")
    assert load_news(published) == load_news(data_dir)


def test_a_header_that_is_not_minds_is_refused_plainly(tmp_path: Path) -> None:
    path = tmp_path / "b.tsv"
    path.write_text(f"impression_id\tuser\ttime\thistory\timpressions\n1\tU1\t{at(10)}\tH2\tC1-0\n", encoding="utf-8")
    with pytest.raises(CommandError, match="expected the header impression_id user_id time history impressions"):
        read_behaviors(path)


def test_every_skipped_impression_is_counted_with_its_reason(data_dir: Path) -> None:
    path = write_behaviors(
        data_dir / "b.tsv",
        [
            ("1", "U1", at(1), "HX", "C1-1 C2-0"),  # history only in English: nothing to read in Mandarin
            ("2", "U2", at(2), "H1", "CE-1"),  # the only candidate has no Mandarin text
            ("3", "U3", at(3), "H1", "C1-0 C2-0 CE-1"),  # the click has no Mandarin text
            ("4", "U4", at(4), "H1", "C1-1 C2-1 CE-0"),  # the non-click has no Mandarin text
            ("5", "U5", at(5), "H1 HX", "C1-1 C2-0 CE-0"),
        ],
    )
    selection = select(read_behaviors(path), load_news(data_dir), SCENARIOS["zh-zh"])
    assert dict(selection.skipped) == {SKIP_NO_HISTORY: 1, SKIP_NO_CANDIDATE: 1, SKIP_NO_CLICK: 1, SKIP_NO_NONCLICK: 1}
    [case] = selection.cases
    assert case.history == ("H1@zh",) and case.history_positions == (0,)
    assert case.candidates == ("C1@zh", "C2@zh") and list(case.labels) == [1, 0]
    assert (selection.candidates_kept, selection.candidates_dropped) == (2, 1)
    assert (selection.history_kept, selection.history_dropped) == (1, 1)


def test_cross_lingual_scenario_reads_history_in_mandarin_and_shows_english(data_dir: Path) -> None:
    path = write_behaviors(data_dir / "b.tsv", [("1", "U1", at(1), "H1 HX C3", "C1-1 CE-0 H2-0")])
    [case] = select(read_behaviors(path), load_news(data_dir), SCENARIOS["zh-en"]).cases
    assert case.history == ("H1@zh", "C3@zh") and case.history_positions == (0, 2)
    assert case.candidates == ("C1@en", "CE@en")  # H2 has no English text


def test_mixed_scenario_picks_one_available_language_per_item_stably() -> None:
    picks = {nid: stable_choice(nid, ["zh", "en"]) for nid in (f"N{i}" for i in range(200))}
    assert picks == {nid: stable_choice(nid, ["en", "zh"]) for nid in picks}  # order of options does not matter
    assert set(picks.values()) == {"en", "zh"}
    assert stable_choice("N1", ["zh"]) == "zh"


def test_topic_matched_candidates_outrank_the_rest_for_xrec_and_mean_of_history(data_dir: Path) -> None:
    path = write_behaviors(
        data_dir / "b.tsv",
        [
            ("1", "U1", at(1), "H1 H2 H3", "C3-0 C1-1 C4-0"),
            ("2", "U2", at(2), "H4 H5", "C1-0 C2-1 C3-0 C4-0"),
        ],
    )
    out = replay(data_dir, path, "zh-zh")
    for system in ("xrec", "mean-of-history"):
        assert out.metrics[system]["auc"] == [1.0, 1.0]
        assert out.metrics[system]["mrr"] == [1.0, 1.0]
        assert out.metrics[system]["ndcg@10"] == pytest.approx([1.0, 1.0])


def test_a_user_with_two_interests_gets_either_interest_ranked_above_a_blend_of_both(data_dir: Path) -> None:
    """Mean-of-history points between the two topics and prefers the blend; with a temperature above 0 the
    interests do not (at 0, the default, xrec scores the importance-weighted mean of interests too)."""
    path = write_behaviors(data_dir / "b.tsv", [("1", "U1", at(1), "H1 H4 H2 H5 H3 H6", "CM-0 C1-1 C2-1")])
    attentive = Settings(interest_temperature=20.0, interest_threshold=0.75, query_expansion=0, trending_weight=0.0)
    out = replay(data_dir, path, "zh-zh", attentive)
    assert out.metrics["xrec"]["auc"] == [1.0]
    assert out.metrics["mean-of-history"]["auc"] == [0.0]


def test_popularity_counts_only_clicks_the_stream_saw_before_the_impression(data_dir: Path) -> None:
    path = write_behaviors(
        data_dir / "b.tsv",
        [
            ("1", "U1", at(1), "H4", "C1-1 C2-0"),  # no click seen yet: C1 and C2 tie at zero
            ("2", "U2", at(2), "H5", "C2-0 C1-1"),  # C1 was clicked in impression 1
        ],
    )
    out = replay(data_dir, path, "zh-zh")
    assert out.metrics["popularity"]["auc"] == [0.5, 1.0]


def test_published_lists_hold_only_shown_items_the_user_has_not_clicked(data_dir: Path) -> None:
    path = write_behaviors(
        data_dir / "b.tsv",
        [
            ("1", "U1", at(1), "H1", "C1-1 C2-0 C3-0"),
            ("2", "U1", at(2), "H1", "C4-0 C2-1"),  # the returning user clicked C1 in impression 1
        ],
    )
    out = replay(data_dir, path, "zh-en")
    xrec_lists = [lst for lst in out.lists if lst.system == "xrec"]
    assert len(xrec_lists) == 2
    shown_so_far = [{"C1@en", "C2@en", "C3@en"}, {"C1@en", "C2@en", "C3@en", "C4@en"}]
    for lst, shown in zip(xrec_lists, shown_so_far, strict=True):
        assert lst.items and set(lst.items) <= shown  # never a history-only (unavailable) item
    assert "C1@en" not in xrec_lists[1].items  # clicked in impression 1: seen, never recommended again
    assert xrec_lists[0].user_langs == {"zh"} and set(xrec_lists[0].langs) == {"en"}
    assert xrec_lists[1].user_langs == {"zh", "en"}
    beyond = eval_mind.beyond_accuracy(out, vectors_for(list(out.pool)))
    assert beyond["catalog_size"] == 4
    assert beyond["xrec"]["unfamiliar_language_share"] == 0.5  # English was new in the first list only
    assert out.impression_clicks_in_profile == 1


def test_vector_cache_encodes_each_text_once_across_runs(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.stack([np.full(4, len(t), np.float32) for t in texts])

    first, encoded = VectorCache(tmp_path / "c").vectors(["a", "bb", "a"], encode)
    assert encoded == 2 and first[:, 0].tolist() == [1, 2, 1]
    again, encoded = VectorCache(tmp_path / "c").vectors(["bb", "ccc"], encode)  # a new process: reads the disk
    assert encoded == 1 and again[:, 0].tolist() == [2, 3]
    assert calls == [["a", "bb"], ["ccc"]]


def test_vector_cache_ignores_a_part_whose_rows_never_landed(tmp_path: Path) -> None:
    cache = VectorCache(tmp_path / "c")
    cache.add(["a"], np.ones((1, 4), np.float32))
    (tmp_path / "c" / "part-0-dead.keys").write_text("deadbeef\n", encoding="ascii")  # keys without rows
    assert len(VectorCache(tmp_path / "c")) == 1


def test_vector_cache_keys_change_with_model_prefix_and_truncation(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 4}')
    fp = checkpoint_fingerprint(tmp_path)
    keys = {
        model_key("m", fp, "passage: ", 256),
        model_key("m", fp, "query: ", 256),
        model_key("m", fp, "passage: ", 128),
        model_key("other", fp, "passage: ", 256),
    }
    assert len(keys) == 4
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    assert checkpoint_fingerprint(tmp_path) != fp


def test_the_command_reports_four_systems_and_writes_a_plot_from_cached_vectors(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = tmp_path / "model"  # a local model directory: its identity keys the cache; never loaded here
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"hidden_size": 32}')
    monkeypatch.setenv("XREC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XREC_MODEL", str(model_dir))
    write_behaviors(
        data_dir / "behaviors_dev.tsv",
        [
            ("1", "U1", at(1), "H1 H2", "C3-0 C1-1 C4-0"),
            ("2", "U2", at(2), "H4 H5", "C1-0 C2-1 C3-0"),
            ("3", "U3", at(3), "HX", "C1-1 C2-0"),
        ],
    )
    settings = Settings.from_env()
    catalog = load_news(data_dir)
    cache = VectorCache.for_settings(settings)
    keys = ["H1@zh", "H2@zh", "H4@zh", "H5@zh", "C1@zh", "C2@zh", "C3@zh", "C4@zh"]
    cache.add([news_of(k, catalog).text for k in keys], np.stack([vector(k.split("@")[0]) for k in keys]))

    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    eval_mind.add_arguments(parser)
    plot = tmp_path / "out" / "mind.png"
    args = parser.parse_args(
        ["--data-dir", str(data_dir), "--scenario", "zh-zh", "--plot", str(plot), "--bootstrap", "50"]
    )
    result = eval_mind.run(args)

    assert result["encoding"]["encoded_now"] == 0 and result["encoding"]["from_cache"] == len(keys)
    assert result["impressions"]["kept"] == 2 and result["impressions"]["skipped"] == {SKIP_NO_HISTORY: 1}
    assert set(result["systems"]) == {"random", "popularity", "mean-of-history", "xrec"}
    assert result["systems"]["xrec"]["auc"]["mean"] == 1.0
    assert result["beyond_accuracy"]["xrec"]["lists"] == 2
    assert plot.stat().st_size > 0 and plot.read_bytes()[:4] == b"\x89PNG"
    orjson.loads(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY))  # one JSON object
    table = eval_mind.format_table(result)
    assert "mean-of-history" in table and "xrec − mean-of-history" in table


def test_the_command_says_plainly_when_nothing_can_be_scored(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_behaviors(data_dir / "behaviors_dev.tsv", [("1", "U1", at(1), "HX", "C1-1 C2-0")])
    parser = argparse.ArgumentParser()
    eval_mind.add_arguments(parser)
    with pytest.raises(CommandError, match="no impression"):
        eval_mind.run(parser.parse_args(["--data-dir", str(data_dir)]))


def test_item_keys_name_the_language_an_item_is_shown_in() -> None:
    assert item_key("N1", "zh") == "N1@zh"


def test_vector_cache_keys_differ_by_backend_and_keep_the_original_for_pytorch_float32(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 4}')
    fp = checkpoint_fingerprint(tmp_path)
    original = model_key("m", fp, "passage: ", 256)
    assert model_key("m", fp, "passage: ", 256, "torch-float32") == original  # existing caches stay valid
    others = {
        model_key("m", fp, "passage: ", 256, b) for b in ("openvino-bfloat16", "openvino-float32", "torch-bfloat16")
    }
    assert len(others) == 3 and original not in others


def test_each_ab_variant_scores_every_impression_and_is_compared_with_the_first_paired(data_dir: Path) -> None:
    path = write_behaviors(
        data_dir / "b.tsv",
        [
            ("1", "U1", at(1), "H1 H2 H3", "C3-0 C1-1 C4-0"),
            ("2", "U2", at(2), "H4 H5", "C1-0 C2-1 C3-0 C4-0"),
        ],
    )
    spec = "A=50; reversed=50 negative_weight=0 query_expansion=0 interest_temperature=0"
    out = replay(data_dir, path, "zh-zh", Settings(interest_temperature=20.0, trending_weight=0.0, variants=spec))
    assert list(out.metrics) == ["random", "popularity", "mean-of-history", "xrec", "xrec[reversed]"]
    assert len(out.metrics["xrec[reversed]"]["auc"]) == len(out.metrics["xrec"]["auc"]) == 2
    summary = eval_mind.summarize(out, rounds=20, seed=0)
    delta = summary["variants_minus_xrec"]["xrec[reversed]"]["auc"]
    expected = np.mean(out.metrics["xrec[reversed]"]["auc"]) - np.mean(out.metrics["xrec"]["auc"])
    assert delta["mean"] == pytest.approx(expected)
    assert "xrec[reversed] − xrec" in eval_mind.format_table(
        {
            **summary,
            "scenario": "zh-zh",
            "description": "",
            "behaviors": "b.tsv",
            "model": "m",
            "impressions": {"kept": 2, "scanned": 2, "read": 2, "skipped": {}},
            "candidates": {"kept": 7, "mean_per_impression": 3.5, "dropped_no_text": 0},
            "settings": {"list_length": 10},
            "encoding": {"texts": 0, "from_cache": 0, "encoded_now": 0, "seconds": 0},
            "seconds": {"replay": 0, "total": 0},
            "scoring": "",
        }
    )


def test_the_replay_feeds_each_impression_as_an_event_before_its_clicks(data_dir: Path) -> None:
    """C2 is shown to five users and taken by none, C1 is taken every time it is shown: by the last
    impression their click-through rates outweigh the user's history, which speaks for C2."""
    rows = [(str(n), f"U{n}", at(1 + n), "H4", "C1-1 C2-0") for n in range(5)]
    rows.append(("9", "U9", at(9), "HX H4", "C2-0 C1-1"))
    path = write_behaviors(data_dir / "b.tsv", rows)
    settings = Settings(trending_weight=0.0, ctr_weight=5.0, fatigue_weight=0.0)
    with_impressions = replay(data_dir, path, "zh-zh", settings)
    assert with_impressions.impressions_replayed == 6
    assert with_impressions.metrics["xrec"]["auc"][-1] == 1.0
    catalog, impressions = load_news(data_dir), read_behaviors(path)
    selection = select(impressions, catalog, SCENARIOS["zh-zh"])
    vectors = vectors_for(eval_mind.needed_items(selection, impressions, catalog, SCENARIOS["zh-zh"]))
    clicks_only = asyncio.run(
        eval_mind.replay(
            settings,
            selection,
            impressions,
            catalog,
            SCENARIOS["zh-zh"],
            vectors,
            28 * eval_mind.DAY_MS,
            0,
            False,
            False,
        )
    )
    assert clicks_only.impressions_replayed == 0
    assert clicks_only.metrics["xrec"]["auc"][-1] == 0.0  # without impressions the history decides
