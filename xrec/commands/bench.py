"""``xrec bench …``: benchmarks that print figures and ratios measured in one run (``xrec/bench/``)."""

from __future__ import annotations

import argparse

from xrec.commands import register_measurements

#: name -> one-line help; the module ``xrec.bench.<name>`` implements it.
BENCHMARKS = {
    "encoder": "encoder sentences/s and tokens/s, batched against a naive one-at-a-time baseline",
    "store": "vector store upsert rate and query latency, edge against qdrant (local mode)",
    "pipeline": "events/s at saturation and event-to-list latency across offered loads, through a real broker",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    register_measurements(
        sub, "bench", "measure encoder, store and pipeline speed (figures and ratios)", "xrec.bench", BENCHMARKS
    )
