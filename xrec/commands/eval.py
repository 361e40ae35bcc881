"""``xrec eval …``: offline evaluations (table or --json).

Each benchmark lives in ``xrec.eval.eval_<name>`` with ``add_arguments(parser)`` and ``run(args) ->
dict``; this module only wires them to the command line.
"""

from __future__ import annotations

import argparse
import importlib

from xrec.commands import print_json

#: name -> one-line help; the module ``xrec.eval.eval_<name>`` implements it.
EVALUATIONS = {
    "align": "cross-lingual alignment: accuracy@1 of translation retrieval on a Tatoeba-format file",
    "mind": "recommendation quality on MIND/xMIND clicks (AUC, MRR, nDCG) against baselines",
    "crosslingual": "readers of one language, judged on topic and language mix, on a multilingual catalog with topics",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("eval", help="measure quality: cross-lingual alignment, recommendation accuracy on real clicks")
    eval_sub = p.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    for name, help_text in EVALUATIONS.items():
        bp = eval_sub.add_parser(name, help=help_text)
        bp.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        module = importlib.import_module(f"xrec.eval.eval_{name}")
        module.add_arguments(bp)
        bp.set_defaults(handler=_runner(module))


def _runner(module):  # type: ignore[no-untyped-def]
    def handler(args: argparse.Namespace) -> int:
        result = module.run(args)
        if args.json:
            print_json(result)
        else:
            print(module.format_table(result))
        return 0

    return handler
