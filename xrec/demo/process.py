"""The demo's worker: ``xrec worker`` as a child process with its own log, web port, home and store."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from xrec.errors import CommandError

#: How the demo starts the worker: the same interpreter and the same CLI, as ``xrec worker``.
WORKER_COMMAND = (sys.executable, "-c", "import sys; from xrec.cli import main; sys.exit(main())", "worker")


class WorkerProcess:
    """``xrec worker`` as a child process with its own log file, web port, home and store."""

    def __init__(self, env: dict[str, str], log_path: Path, web_port: int) -> None:
        self.env = env
        self.log_path = log_path
        self.web_port = web_port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                WORKER_COMMAND,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops the worker in order
            )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exited(self) -> int | None:
        return self.process.poll() if self.process else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join("    " + line for line in text)

    def get(self, path: str, timeout_s: float = 3.0) -> tuple[int, bytes]:
        """Status and body of a GET on the worker's web server (HTTP errors are answers too)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout_s) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] | str = "the web server never answered"
        while time.monotonic() < deadline:
            code = self.exited()
            if code is not None:
                raise CommandError(
                    f"the worker exited with code {code} while starting; its log is {self.log_path}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError, ValueError):
                status, body = self.get("/readyz")
                last = orjson.loads(body)
                if status == 200 and isinstance(last, dict) and last.get("ready"):
                    return last
            time.sleep(0.5)
        raise CommandError(
            f"the worker did not become ready within {timeout_s:.0f} s (last /readyz: {last}); "
            f"see its log {self.log_path}:\n{self.log_tail()}"
        )

    def metrics(self) -> dict[str, float]:
        """Sums of this worker's Prometheus samples by sample name (labels folded)."""
        from prometheus_client.parser import text_string_to_metric_families

        _, body = self.get("/metrics")
        sums: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                sums[sample.name] = sums.get(sample.name, 0.0) + float(sample.value)
        return sums

    def labelled(self, sample_name: str, label: str) -> dict[str, float]:
        """One sample's values by one label, e.g. ``xrec_events_total`` by ``outcome``."""
        from prometheus_client.parser import text_string_to_metric_families

        _, body = self.get("/metrics")
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == sample_name:
                    key = sample.labels.get(label, "")
                    out[key] = out.get(key, 0.0) + float(sample.value)
        return out

    def stop(self, timeout_s: float = 30.0) -> str:
        """SIGTERM, wait, then SIGKILL the process group; says how it ended."""
        if self.process is None:
            return "not started"
        if self.process.poll() is not None:
            return f"had already exited with code {self.process.returncode}"
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
            return f"stopped (exit code {code}) in {time.monotonic() - started:.1f} s"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            return f"did not stop within {timeout_s:.0f} s of SIGTERM and was killed"
