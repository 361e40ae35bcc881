"""``xrec eval …``: offline evaluations of quality on real data (``xrec/eval/``)."""

from __future__ import annotations

import argparse

from xrec.commands import register_measurements

#: name -> one-line help; the module ``xrec.eval.<name>`` implements it.
EVALUATIONS = {
    "align": "cross-lingual alignment: accuracy@1 of translation retrieval on a Tatoeba-format file",
    "mind": "recommendation quality on MIND/xMIND clicks (AUC, MRR, nDCG) against baselines",
    "crosslingual": "readers of one language, judged on topic and language mix, on a multilingual catalog with topics",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    register_measurements(
        sub,
        "eval",
        "measure quality: cross-lingual alignment, recommendation accuracy on real clicks",
        "xrec.eval",
        EVALUATIONS,
    )
