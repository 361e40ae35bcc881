"""The library's layering: ``xrec/`` knows nothing of Faust, of ``streams/`` or of the CLI.

Only the CLI (``xrec/cli.py`` and ``xrec/commands/``) may reach into ``streams`` (``xrec worker``
starts the Faust app). Everything else must import and run where Faust is not installed, so a
newcomer can test the engine in-process and a library user never pulls the CLI in.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "xrec"
CLI = {PACKAGE / "cli.py", *(PACKAGE / "commands").rglob("*.py")}
FORBIDDEN = ("faust", "mode", "streams", "xrec.cli", "xrec.commands")


def imported_modules(path: Path) -> list[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count too)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def forbidden_imports(path: Path) -> list[str]:
    return [n for n in imported_modules(path) if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]


def library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p not in CLI)


def test_no_library_module_imports_faust_streams_or_the_cli() -> None:
    offenders = {str(p.relative_to(PACKAGE.parent)): bad for p in library_modules() if (bad := forbidden_imports(p))}
    assert offenders == {}


def test_the_rule_catches_a_lazy_import_of_the_cli(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from xrec.cli import main\n    import faust\n    from xrec import commands\n")
    assert forbidden_imports(module) == ["xrec.cli", "xrec.cli.main", "faust", "xrec.commands"]


def test_every_library_module_imports_with_faust_and_streams_unavailable() -> None:
    names = [
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for p in library_modules()
    ]
    script = (
        "import importlib, sys\n"
        "for blocked in ('faust', 'mode', 'streams'):\n"
        "    sys.modules[blocked] = None\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m.startswith(('xrec.cli', 'xrec.commands')))\n"
        "assert not leaked, leaked\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def test_only_the_openvino_gateway_imports_openvino() -> None:
    """``xrec.openvino_encoder.import_openvino`` keeps OpenVINO's usage reports off; a direct import would not."""
    gateway = PACKAGE / "openvino_encoder.py"
    files = [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "streams").rglob("*.py")]
    offenders = [
        str(p.relative_to(PACKAGE.parent))
        for p in files
        if p != gateway and any(n == "openvino" or n.startswith("openvino.") for n in imported_modules(p))
    ]
    assert offenders == []
