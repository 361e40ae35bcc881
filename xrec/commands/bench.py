"""``xrec bench …``: benchmarks that print figures and ratios measured in one run (table or --json).

Each benchmark lives in ``xrec.eval.bench_<name>`` with ``add_arguments(parser)`` and ``run(args) ->
dict``; this module only wires them to the command line.
"""

from __future__ import annotations

import argparse
import importlib

from xrec.commands import print_json

#: name -> one-line help; the module ``xrec.eval.bench_<name>`` implements it.
BENCHMARKS = {
    "encoder": "encoder sentences/s and tokens/s, batched against a naive one-at-a-time baseline",
    "store": "vector store upsert rate and query latency, edge against qdrant (local mode)",
    "pipeline": "end-to-end events/s and event-to-publish latency through the real broker",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="measure encoder, store and pipeline speed (figures and ratios)")
    bench_sub = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for name, help_text in BENCHMARKS.items():
        bp = bench_sub.add_parser(name, help=help_text)
        bp.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        module = importlib.import_module(f"xrec.eval.bench_{name}")
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
