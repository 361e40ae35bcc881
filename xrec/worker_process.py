"""``xrec worker`` (or any xrec child) as a subprocess: its log, its web server, its metrics, its stop.

One harness for everyone who runs a worker from the outside: the demo, the pipeline benchmark and
the integration tests. It owns the process; what a caller reads of it (readiness, metric sums) comes
through here, parsed one way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from xrec.errors import XrecError

#: How a worker is started: the same interpreter and the same CLI, as ``xrec worker``.
WORKER_COMMAND = (sys.executable, "-m", "xrec.cli", "worker")


class WorkerProcessError(XrecError):
    """A child process exited or never became ready; the message ends with the tail of its log."""


@dataclass(frozen=True)
class MetricSamples:
    """One scrape of a worker's ``/metrics``: every sample with its labels."""

    samples: tuple[tuple[str, dict[str, str], float], ...]

    @classmethod
    def parse(cls, text: str) -> MetricSamples:
        from prometheus_client.parser import text_string_to_metric_families

        return cls(
            tuple(
                (sample.name, dict(sample.labels), float(sample.value))
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            )
        )

    def sum(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (all label sets when none)."""
        return sum(
            value
            for sample, have, value in self.samples
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        )

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """The samples of ``name`` summed by one label, e.g. ``xrec_events_total`` by ``outcome``."""
        out: dict[str, float] = {}
        for sample, labels, value in self.samples:
            if sample == name:
                key = labels.get(label, "")
                out[key] = out.get(key, 0.0) + value
        return out


EMPTY_METRICS = MetricSamples(())


class WorkerProcess:
    """A child process with its own log file and, for a worker, a web port (``/readyz``, ``/metrics``)."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        web_port: int = 0,
        argv: Sequence[str] = WORKER_COMMAND,
        name: str = "worker",
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.web_port = web_port
        self.argv = list(argv)
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self.stop_note = "still running"

    def start(self, *, own_session: bool = False) -> WorkerProcess:
        """Start the process, its output appended to the log. ``own_session``: Ctrl-C in the terminal
        reaches only the parent, which then stops the child in order (the demo)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=own_session,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exited(self) -> int | None:
        """The exit code, or None while it runs (or before it started)."""
        return self.process.poll() if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to end by itself; its exit code (``subprocess.TimeoutExpired`` if not)."""
        assert self.process is not None, "not started"
        return self.process.wait(timeout_s)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join("    " + line for line in text)

    def first_error(self, lines: int = 40) -> str:
        """The log from its first ERROR or CRITICAL line on (a traceback follows it), else its tail: what
        explains a run that went wrong is rarely in the last lines."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        starts = [i for i, line in enumerate(text) if "[ERROR]" in line or "[CRITICAL]" in line or " ERROR " in line]
        # aiokafka logs a coordinator lookup that is retried at once as an ERROR on every start
        starts = [i for i in starts if "GroupCoordinatorNotAvailableError" not in text[i]]
        if not starts:
            return self.log_tail(lines)
        return "\n".join("    " + line for line in text[starts[0] : starts[0] + lines])

    def failure(self, what: str) -> WorkerProcessError:
        return WorkerProcessError(f"{self.name} {what}; last lines of its log {self.log_path}:\n{self.log_tail()}")

    # --- the web server ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def get(self, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
        """Status and body of a GET on the worker's web server (HTTP errors are answers too)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout_s) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def get_json(self, path: str, timeout_s: float = 5.0) -> tuple[int, Any]:
        status, body = self.get(path, timeout_s)
        return status, orjson.loads(body) if body else None

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        """Block until ``/readyz`` says ready; its answer. Raises if the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        last: Any = "the web server never answered"
        while time.monotonic() < deadline:
            code = self.exited()
            if code is not None:
                raise self.failure(f"exited with code {code} while starting")
            with contextlib.suppress(OSError, ValueError):
                status, last = self.get_json("/readyz", timeout_s=3.0)
                if status == 200 and isinstance(last, dict) and last.get("ready"):
                    return last
            time.sleep(0.5)
        raise self.failure(f"did not become ready within {timeout_s:.0f} s (last /readyz: {last})")

    def metrics(self) -> MetricSamples:
        """One scrape of ``/metrics`` (``OSError`` when the web server does not answer)."""
        _, body = self.get("/metrics")
        return MetricSamples.parse(body.decode())

    def metrics_or_empty(self) -> MetricSamples:
        """``metrics()``, or no samples while the web server does not answer (starting, busy, gone)."""
        try:
            return self.metrics()
        except (OSError, ValueError):
            return EMPTY_METRICS

    # --- stopping -------------------------------------------------------------------------------
    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int | None:
        """Send ``sig``, wait, then SIGKILL the process (and its group, when it has its own); the exit code
        (None if it never started). ``stop_note`` then says how it ended."""
        if self.process is None:
            self.stop_note = "was never started"
            return None
        if self.process.poll() is not None:
            self.stop_note = f"had already exited with code {self.process.returncode}"
            return self.process.returncode
        started = time.monotonic()
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout_s)
            self.stop_note = f"stopped (exit code {code}) in {time.monotonic() - started:.1f} s"
            return code
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(self.process.pid) == self.process.pid:
                    os.killpg(self.process.pid, signal.SIGKILL)
                else:
                    self.process.kill()
            code = self.process.wait(10)
            self.stop_note = f"did not stop within {timeout_s:.0f} s of signal {sig} and was killed"
            return code
