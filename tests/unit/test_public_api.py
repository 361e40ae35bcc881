"""What ``from xrec import …`` offers an embedding program, and that offering it stays cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

import xrec


@pytest.mark.parametrize("name", sorted(xrec.__all__))
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(xrec, name) is not None


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        xrec.Nope  # noqa: B018


def test_every_library_error_is_an_xrec_error() -> None:
    for name in (
        "SettingsError",
        "CommandError",
        "DeviceUnavailableError",
        "BackendUnavailableError",
        "ModelUnavailableError",
        "StoreError",
        "RecordError",
    ):
        assert issubclass(getattr(xrec, name), xrec.XrecError), name


def test_importing_xrec_does_not_load_torch_or_qdrant() -> None:
    script = "import sys, xrec; print(sorted(m for m in ('torch', 'qdrant_client', 'qdrant_edge') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_every_lazily_loaded_name_is_public() -> None:
    assert set(xrec._LAZY) <= set(xrec.__all__)
