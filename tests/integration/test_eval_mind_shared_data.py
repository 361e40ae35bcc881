"""``xrec eval mind`` on the real MIND/xMIND dev file, when ``../shared/data`` is beside the repository.

This is the shared-data run as a test: the real encoder (prepared by ``xrec model prepare``, item
vectors cached on disk), the real store and the served ranking. It checks the command's promises —
all four systems on the same impressions, counts that add up, xrec clearly above random — not the
exact figures, which EVALUATION.md reports. Skips cleanly on a fresh clone without the data.
"""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from xrec.config import Settings

DATA = Settings.from_env().shared_data("mind-xmind")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "behaviors_dev.tsv").is_file(), reason=f"shared MIND data not found at {DATA}"),
]


def eval_mind(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "xrec.cli", "eval", "mind", "--data-dir", str(DATA), "--json", *args],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return orjson.loads(done.stdout)


@pytest.mark.timeout(1900)
def test_cross_lingual_scenario_scores_all_systems_and_xrec_beats_random() -> None:
    result = eval_mind("--scenario", "zh-en", "--bootstrap", "500")
    imp = result["impressions"]
    assert imp["kept"] + sum(imp["skipped"].values()) == imp["scanned"] == imp["read"]
    assert imp["kept"] > 50
    assert set(result["systems"]) == {"random", "popularity", "mean-of-history", "xrec"}
    xrec_auc = result["systems"]["xrec"]["auc"]
    assert xrec_auc["ci_low"] > 0.5 > result["systems"]["random"]["auc"]["ci_low"]
    beyond = result["beyond_accuracy"]["xrec"]
    assert beyond["lists"] == imp["kept"]
    assert beyond["unfamiliar_language_share"] > 0.9  # Mandarin readers, English catalog: lists cross languages


@pytest.mark.timeout(1900)
def test_a_limited_monolingual_run_keeps_exactly_the_first_impressions_asked_for() -> None:
    result = eval_mind("--scenario", "zh-zh", "--limit", "40", "--no-lists", "--bootstrap", "200")
    assert result["impressions"]["kept"] == 40
    assert result["beyond_accuracy"] is None
    for system in result["systems"].values():
        for metric in system.values():
            assert 0.0 <= metric["ci_low"] <= metric["mean"] <= metric["ci_high"] <= 1.0
