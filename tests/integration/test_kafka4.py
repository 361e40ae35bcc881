"""The integration suite once more against the newest Kafka 4 release, as new deployments start there.

Kafka 4.0 removed old protocol versions (KIP-896), moved to log4j2 and changed the transaction
protocol (KIP-890); aiokafka and Faust speak to it through the same code paths the suite covers. This
test runs the other integration tests in a child pytest with ``XREC_KAFKA_VERSION`` set to
``xrec.broker.KAFKA4_VERSION`` (its own local broker, fetched from Maven Central once) and fails with
the child's summary if any of them fails. Run directly with ``XREC_KAFKA_VERSION=4.4.0 ./run test``
for a readable report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xrec.broker import KAFKA4_VERSION
from xrec.config import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

HERE = Path(__file__).resolve()


@pytest.mark.skipif(
    Settings.from_env().kafka_version.startswith("4.") or bool(Settings.from_env().kafka_bootstrap),
    reason="this run already uses Kafka 4, or an external cluster (XREC_KAFKA_BOOTSTRAP)",
)
def test_the_integration_suite_passes_against_kafka_4() -> None:
    env = {**os.environ, "XREC_KAFKA_VERSION": KAFKA4_VERSION}
    cmd = [sys.executable, "-m", "pytest", str(HERE.parent), f"--ignore={HERE}", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(cmd, env=env, cwd=HERE.parents[2], capture_output=True, text=True, timeout=2300)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "(no output)"
    assert done.returncode == 0, (
        f"against Kafka {KAFKA4_VERSION}: {summary}\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
    )
    assert " passed" in summary and "failed" not in summary, summary
