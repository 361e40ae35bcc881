"""A Qdrant server process on loopback, for the test suite of the ``qdrant`` backend.

Users run Qdrant their own way (the ``qdrant/qdrant`` Docker image, a package, Qdrant Cloud) and point
``XREC_QDRANT_URL`` at it; this runs the same server binary (``XREC_QDRANT_BIN``) with all of its
state in one directory, on ports of its own, optionally behind an API key, and can stop and start it
again on the same storage, so an outage can be staged.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from xrec.broker import HOST, free_port
from xrec.errors import XrecError

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0


class QdrantServerError(XrecError, RuntimeError):
    """The Qdrant server binary is missing, or the server did not start; the message says which."""


class LocalQdrantServer:
    """``binary`` serving HTTP and gRPC on ``127.0.0.1``, storage and log under ``data_dir``."""

    def __init__(self, binary: Path | str, data_dir: Path | str, *, api_key: str = "") -> None:
        self.binary = Path(binary)
        self.data_dir = Path(data_dir).resolve()
        self.api_key = api_key
        self.http_port = free_port()
        self.grpc_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "qdrant.log"

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs (to sample its CPU)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> LocalQdrantServer:
        """Start the server (on the same ports and storage as before, if it ran) and wait until it is ready."""
        if self.running:
            return self
        if not os.access(self.binary, os.X_OK):
            raise QdrantServerError(f"no executable Qdrant server at {self.binary} (set XREC_QDRANT_BIN)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "QDRANT__SERVICE__HOST": HOST,
            "QDRANT__SERVICE__HTTP_PORT": str(self.http_port),
            "QDRANT__SERVICE__GRPC_PORT": str(self.grpc_port),
            "QDRANT__STORAGE__STORAGE_PATH": str(self.data_dir / "storage"),
            "QDRANT__STORAGE__SNAPSHOTS_PATH": str(self.data_dir / "snapshots"),
            "QDRANT__TELEMETRY_DISABLED": "true",
        }
        if self.api_key:
            env["QDRANT__SERVICE__API_KEY"] = self.api_key
        with self.log_file.open("ab") as out:
            # Its working directory is data_dir: the server writes an init marker and ./static there.
            self._proc = subprocess.Popen(
                [str(self.binary)], cwd=self.data_dir, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self._wait_ready(timeout_s)
        log.info(
            "qdrant server %s ready at %s (gRPC port %d), data in %s",
            self.binary,
            self.url,
            self.grpc_port,
            self.data_dir,
        )
        return self

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop it (SIGTERM, then SIGKILL); its storage stays for the next ``start``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Kill it at once (SIGKILL), as a crash would."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> LocalQdrantServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise QdrantServerError(f"qdrant server exited with status {code} at start; see {self.log_file}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1.0) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise QdrantServerError(f"qdrant server not ready at {self.url} after {timeout_s:.0f} s; see {self.log_file}")
