"""``xrec bench store`` on a tiny workload: it runs end to end and its answers match numpy brute force."""

from __future__ import annotations

import argparse

from xrec.bench import store as bench_store


def tiny_args(**overrides: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_store.add_arguments(parser)
    args = parser.parse_args(["--sizes", "300", "--dim", "16", "--queries", "12", "--batch", "4", "--budget-s", "5"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def test_bench_store_measures_both_backends_with_exact_answers() -> None:
    result = bench_store.run(tiny_args())
    runs = {(r["backend"], r["phase"]): r for r in result["runs"]}
    assert set(runs) == {("edge", "before optimize"), ("edge", "after optimize"), ("qdrant local", "in memory")}
    for run in runs.values():
        assert run["size"] == 300
        assert run["recall_at_10"] == 1.0  # exact search under the same filter and exclusions as numpy
        assert run["single_n"] >= 1
        assert run["batch_n"] >= 1
        assert run["single_p50_ms"] <= run["single_p99_ms"]
    assert runs[("edge", "after optimize")]["search"] == "exact"  # 300 items: far below the index threshold
    assert result["edge_gil"]["verdict"]
    table = bench_store.format_table(result)
    assert "qdrant local" in table
    assert "edge GIL" in table


def test_bench_store_workload_respects_filters_in_its_ground_truth() -> None:
    work = bench_store.make_workload(200, 8, seed=3)
    for query in bench_store.make_queries(work, 10, 200, seed=3):
        for item_id in bench_store.exact_answer(work, 200, query):
            i = int(item_id.removeprefix("item-"))
            assert work.available[i]
            assert bench_store.LANGS[work.langs[i]] in (query.filter.langs or ())
            assert item_id not in query.exclude_ids
