"""Measuring a child process from the outside: CPU seconds, RSS and per-thread CPU sampled from ``/proc``."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np

from xrec.worker_process import WorkerProcess

SAMPLE_EVERY_S = 0.1


class ProcSampler(threading.Thread):
    """Samples a process's CPU seconds (user+system) and RSS from /proc every 100 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True, name=f"sampler-{pid}")
        self.pid = pid
        self.samples: list[tuple[float, float, int]] = []  # (wall s, cpu s, rss bytes)
        self.thread_samples: list[tuple[float, dict[str, float]]] = []  # (wall s, cpu s by thread name), every 1 s
        self._halt = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")

    def read(self) -> tuple[float, int] | None:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            statm = Path(f"/proc/{self.pid}/statm").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime (fields 14, 15 of stat)
        return cpu, int(statm.split()[1]) * self._page

    def read_threads(self) -> dict[str, float]:
        """CPU seconds by thread name (numbered pool threads summed: ``edge-search-3`` → ``edge-search``)."""
        out: dict[str, float] = {}
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            try:
                stat = (task / "stat").read_text()
                name = (task / "comm").read_text().strip()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            key = re.sub(r"[-_]\d+$", "", name) or name
            out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / self._tick
        return out

    def run(self) -> None:
        n = 0
        while not self._halt.is_set():
            got = self.read()
            if got is None:
                return
            now = time.time()
            self.samples.append((now, got[0], got[1]))
            if n % 10 == 0:
                self.thread_samples.append((now, self.read_threads()))
            n += 1
            self._halt.wait(SAMPLE_EVERY_S)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)

    def cpu_at(self, wall_s: float) -> float:
        return float(np.interp(wall_s, [s[0] for s in self.samples], [s[1] for s in self.samples]))

    def rss_at(self, wall_s: float) -> int:
        return int(np.interp(wall_s, [s[0] for s in self.samples], [s[2] for s in self.samples]))

    def threads_between(self, start_s: float, end_s: float) -> dict[str, float]:
        """CPU seconds each thread (by name) used between two moments (1 s resolution)."""
        before = [t for t in self.thread_samples if t[0] <= start_s]
        after = [t for t in self.thread_samples if t[0] >= end_s]
        first = before[-1][1] if before else (self.thread_samples[0][1] if self.thread_samples else {})
        last = after[0][1] if after else (self.thread_samples[-1][1] if self.thread_samples else {})
        return {name: last[name] - first.get(name, 0.0) for name in last if last[name] - first.get(name, 0.0) > 0}


class SampledProcess(WorkerProcess):
    """A child of the bench (worker or baseline) whose CPU, memory and threads are sampled while it runs."""

    def start(self, *, own_session: bool = False) -> SampledProcess:
        super().start(own_session=own_session)
        assert self.pid is not None
        self.sampler = ProcSampler(self.pid)
        self.sampler.start()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int | None:
        code = super().stop(sig, timeout_s)
        self.sampler.stop()
        return code


def py_spy_format(out: Path) -> str:
    """py-spy's output format from the file name: speedscope for .json, collapsed stacks for .txt/.folded
    (which the bench summarizes), a flame graph otherwise."""
    return "speedscope" if out.suffix == ".json" else "raw" if out.suffix in (".txt", ".folded") else "flamegraph"


def py_spy_argv(exe: str, pid: int, seconds: float, out: Path, *, gil: bool = False) -> list[str]:
    """The py-spy command that records ``pid`` without pausing it. ``gil``: only the thread holding the
    interpreter lock is sampled, which is where a worker bound by that lock spends its time (a plain
    record also counts threads waiting for the lock as busy)."""
    argv = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200", "--nonblocking"]
    return [*argv, *(["--gil"] if gil else []), "--format", py_spy_format(out), "--output", str(out)]
