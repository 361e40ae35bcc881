"""``xrec eval …`` and ``xrec bench …``: measurements that print one run's figures (``--json``: one object).

Quality on real data lives in ``xrec/eval/``, speed in ``xrec/bench/``; each entry below is the module
``<package>.<name>`` with ``add_arguments``, ``run`` and ``format_table``.
"""

from __future__ import annotations

import argparse

from xrec.commands import register_measurements

EVALUATIONS = {
    "align": "cross-lingual alignment: accuracy@1 of translation retrieval on a Tatoeba-format file",
    "mind": "recommendation quality on MIND/xMIND clicks (AUC, MRR, nDCG) against baselines",
    "crosslingual": "readers of one language, judged on topic and language mix, on a multilingual catalog with topics",
}

BENCHMARKS = {
    "encoder": "encoder sentences/s and tokens/s, batched against a naive one-at-a-time baseline",
    "store": "vector store upsert rate and query latency, edge against qdrant (local mode)",
    "pipeline": "events/s at saturation and event-to-list latency across offered loads, through a real broker",
    "restart": "seconds from a worker's start to its first list, holding many profiles, cold and after a clean stop",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    register_measurements(
        sub,
        "eval",
        "measure quality: cross-lingual alignment, recommendation accuracy on real clicks",
        "xrec.eval",
        EVALUATIONS,
    )
    register_measurements(
        sub, "bench", "measure encoder, store and pipeline speed (figures and ratios)", "xrec.bench", BENCHMARKS
    )
