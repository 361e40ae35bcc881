"""A local single-node Apache Kafka broker (KRaft), fetched from Maven Central and run with ``java``.

No Docker and no tarball download: ``mvn dependency:copy-dependencies`` pulls
``org.apache.kafka:kafka_2.13`` with its runtime dependencies plus the logging backend the release
tarball ships, into ``$XREC_HOME/kafka/<version>/libs``; a marker file written after a complete
fetch makes later starts skip Maven and keeps a half-finished fetch from ever being used.

Pinned version: Apache Kafka **3.9.2**, the newest 3.9 patch release on Maven Central when pinned, KRaft without
ZooKeeper. It was checked here with aiokafka 0.14 and faust-streaming 0.15: produce/consume, the
admin client, consumer-group commits, aiokafka's transactional producer (commit and abort seen
through a ``read_committed`` consumer) and a Faust worker with ``processing_guarantee="exactly_once"``
(tests/integration). Kafka 4 (``XREC_KAFKA_VERSION=4.4.0``, ``KAFKA4_VERSION``) runs too, and the
suite checks it once per run (tests/integration/test_kafka4.py); 3.9.2 stays the default because
nothing in xrec needs a 4.x feature. The 3.9 tarball logs through slf4j 1.7 + reload4j, Kafka 4
through slf4j 2 + log4j2: the jars and the logging file follow the version.

The broker is a combined broker+controller on 127.0.0.1 with settings for one node (replication
factors 1, transaction log min ISR 1, no initial rebalance delay, a small heap with the log
cleaner's dedupe buffer shrunk to fit so compacted topics keep being cleaned). It runs detached in
its own process group; its pid, port and version sit in ``broker.json`` in the data dir and its log
in ``server.log`` there. Storage is formatted once, so a restart keeps topics and records.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from xrec.config import Settings
from xrec.errors import XrecError

log = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.2"
#: The newest Kafka 4 release on Maven Central when pinned; the suite also runs against it
#: (``XREC_KAFKA_VERSION``; tests/integration/test_kafka4.py).
KAFKA4_VERSION = "4.4.0"
SCALA_VERSION = "2.13"
#: The logging backend the Kafka 3.9 release tarball ships (slf4j 1.7 binding to reload4j).
LOGGING_ARTIFACTS = (("org.slf4j", "slf4j-reload4j", "1.7.36"), ("ch.qos.reload4j", "reload4j", "1.2.25"))
#: Kafka 4 logs through log4j2 (KIP-653): slf4j 2 bound to log4j-core, as its tarball ships.
LOG4J2_ARTIFACTS = (
    ("org.apache.logging.log4j", "log4j-slf4j2-impl", "2.24.3"),
    ("org.apache.logging.log4j", "log4j-core", "2.24.3"),
)


def uses_log4j2(version: str) -> bool:
    return int(version.split(".", 1)[0]) >= 4


MIN_JAVA = 17
DEFAULT_HEAP = "512m"
HOST = "127.0.0.1"
NODE_ID = 1
_COMPLETE_MARKER = ".complete"


class BrokerError(XrecError, RuntimeError):
    """The local broker cannot be fetched, started or stopped; the message says what to do."""


@dataclass(frozen=True)
class SaslPlainUser:
    """The one user of an optional SASL/PLAIN client listener (also used by the broker itself)."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"SaslPlainUser(username={self.username!r})"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.username):
            raise BrokerError("SASL user name: use letters, digits, '_', '.' or '-'")
        if not self.password or any(c in self.password for c in '"\\\n\r'):
            raise BrokerError("SASL password: must be non-empty and hold no quote, backslash or newline")


@dataclass(frozen=True)
class BrokerStatus:
    """What ``xrec broker status`` reports."""

    running: bool
    pid: int | None
    port: int
    version: str
    data_dir: str
    log_file: str
    security_protocol: str

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bootstrap": self.bootstrap}


@dataclass(frozen=True)
class StartReport:
    """The result of ``start()``: the status, and what this call had to do to get there."""

    status: BrokerStatus
    already_running: bool
    downloaded: bool
    formatted: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.status.to_dict(),
            "already_running": self.already_running,
            "downloaded": self.downloaded,
            "formatted": self.formatted,
            "seconds": round(self.seconds, 3),
        }


# --- prerequisites ----------------------------------------------------------------------------


def parse_java_version(text: str) -> int:
    """The major version from ``java -version`` output (``"17.0.15"`` → 17, ``"1.8.0_392"`` → 8)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        raise BrokerError(f"cannot read the Java version from: {text.strip()[:200]!r}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


@lru_cache(maxsize=4)
def _java_major(java: str) -> int:
    done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    return parse_java_version(done.stderr + done.stdout)


def find_java() -> str:
    """The ``java`` on PATH, checked to be Java 17 or newer."""
    java = shutil.which("java")
    if java is None:
        raise BrokerError(
            f"java not found on PATH: the local Kafka broker needs Java {MIN_JAVA} or newer (e.g. apt-get install openjdk-17-jre-headless)"
        )
    major = _java_major(java)
    if major < MIN_JAVA:
        raise BrokerError(f"{java} is Java {major}; the local Kafka broker needs Java {MIN_JAVA} or newer")
    return java


def find_maven() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "mvn not found on PATH: fetching the Kafka jars from Maven Central needs Maven (e.g. apt-get install maven)"
        )
    return mvn


# --- fetching the jars ------------------------------------------------------------------------


def render_pom(version: str = KAFKA_VERSION) -> str:
    """A throwaway pom whose runtime dependencies are exactly the broker's classpath."""
    logging_deps = LOG4J2_ARTIFACTS if uses_log4j2(version) else LOGGING_ARTIFACTS
    deps = [("org.apache.kafka", f"kafka_{SCALA_VERSION}", version), *logging_deps]
    lines = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.xrec</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
{lines}
  </dependencies>
</project>
"""


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def kafka_libs(cache_dir: Path, version: str = KAFKA_VERSION) -> Path:
    return cache_dir / version / "libs"


def jars_cached(cache_dir: Path, version: str = KAFKA_VERSION) -> bool:
    """True only after a fetch completed: the marker is written last."""
    return (cache_dir / version / _COMPLETE_MARKER).is_file() and kafka_libs(cache_dir, version).is_dir()


def fetch_kafka(cache_dir: Path, version: str = KAFKA_VERSION, *, timeout_s: float = 900.0) -> tuple[Path, bool]:
    """Make sure the Kafka jars are in the cache; return (libs dir, whether Maven ran now)."""
    root = cache_dir / version
    libs = kafka_libs(cache_dir, version)
    if jars_cached(cache_dir, version):
        return libs, False
    with _file_lock(root / ".lock"):
        if jars_cached(cache_dir, version):  # another process finished it while we waited
            return libs, False
        mvn = find_maven()
        pom = root / "pom.xml"
        pom.write_text(render_pom(version))
        partial = root / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        log.info("fetching Apache Kafka %s jars from Maven Central into %s (first run only)", version, libs)
        started = time.monotonic()
        cmd = [
            mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom),
            "dependency:copy-dependencies", f"-DoutputDirectory={partial}", "-DincludeScope=runtime",
        ]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False, cwd=root)
        except subprocess.TimeoutExpired:
            raise BrokerError(f"mvn did not finish fetching Kafka {version} within {timeout_s:.0f}s") from None
        main_jar = partial / f"kafka_{SCALA_VERSION}-{version}.jar"
        if done.returncode != 0 or not main_jar.is_file():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise BrokerError(f"mvn could not fetch Kafka {version} (exit {done.returncode}); pom: {pom}\n{tail}")
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        jars = sorted(p.name for p in libs.glob("*.jar"))
        (root / _COMPLETE_MARKER).write_text(json.dumps({"version": version, "jars": jars, "fetched_at": time.time()}))
        log.info("fetched %d jars in %.1fs", len(jars), time.monotonic() - started)
    return libs, True


# --- configuration files ----------------------------------------------------------------------


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID in Kafka's base64url form (what ``StorageTool random-uuid`` prints)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def render_server_properties(
    *, port: int, controller_port: int, log_dir: Path, sasl: SaslPlainUser | None = None
) -> str:
    """server.properties for one combined broker+controller node listening on 127.0.0.1 only."""
    client = "SASL_PLAINTEXT" if sasl else "PLAINTEXT"
    lines = [
        "# written by xrec on every start; edits are overwritten",
        "process.roles=broker,controller",
        f"node.id={NODE_ID}",
        f"controller.quorum.voters={NODE_ID}@{HOST}:{controller_port}",
        f"listeners={client}://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        f"advertised.listeners={client}://{HOST}:{port}",
        "controller.listener.names=CONTROLLER",
        f"inter.broker.listener.name={client}",
        f"listener.security.protocol.map={client}:{client},CONTROLLER:PLAINTEXT",
        f"log.dirs={log_dir}",
        # one node: nothing can be replicated
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "default.replication.factor=1",
        "min.insync.replicas=1",
        # fewer internal partitions than the default 50: quicker first group/transaction on a small machine
        "offsets.topic.num.partitions=8",
        "transaction.state.log.num.partitions=8",
        "num.partitions=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "delete.topic.enable=true",
        # the cleaner's dedupe buffer (128 MiB by default) must fit the small heap, or compaction stops
        "log.cleaner.enable=true",
        "log.cleaner.threads=1",
        "log.cleaner.dedupe.buffer.size=16777216",
        "num.network.threads=2",
        "num.io.threads=4",
        "num.recovery.threads.per.data.dir=1",
    ]
    if sasl:
        jaas = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{sasl.username}" password="{sasl.password}" user_{sasl.username}="{sasl.password}";'
        )
        lines += [
            "sasl.enabled.mechanisms=PLAIN",
            "sasl.mechanism.inter.broker.protocol=PLAIN",
            f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}",
        ]
    return "\n".join(lines) + "\n"


def render_log4j2(log_file: Path) -> str:
    """The same logging as :func:`render_log4j` in log4j2's properties format (Kafka 4)."""
    return f"""status=warn
appender.file.type=RollingFile
appender.file.name=file
appender.file.fileName={log_file}
appender.file.filePattern={log_file}.%i
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
appender.file.policies.type=Policies
appender.file.policies.size.type=SizeBasedTriggeringPolicy
appender.file.policies.size.size=20MB
appender.file.strategy.type=DefaultRolloverStrategy
appender.file.strategy.max=2
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
logger.request.name=kafka.request.logger
logger.request.level=WARN
logger.state.name=state.change.logger
logger.state.level=WARN
"""


def render_log4j(log_file: Path) -> str:
    return f"""log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={log_file}
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.controller=INFO
log4j.logger.state.change.logger=WARN
"""


# --- processes --------------------------------------------------------------------------------


def port_is_free(port: int, host: str = HOST) -> bool:
    """True unless something listens on the port (connections in TIME_WAIT after a stop do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Kafka binds its own listeners
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (zombies of ours are reaped here)."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def kafka_java_pids(data_dir: Path) -> list[int]:
    """Every running java process serving this data dir (read from /proc; used by stop and the tests)."""
    props = str(Path(data_dir).resolve() / "server.properties")
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        cmd = _cmdline(int(entry.name))
        if cmd and "kafka.Kafka" in cmd and props in cmd and pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


# --- the broker -------------------------------------------------------------------------------


class LocalBroker:
    """A single-node KRaft broker in ``data_dir`` serving ``127.0.0.1:port``, jars from ``cache_dir``."""

    def __init__(
        self,
        port: int,
        data_dir: Path | str,
        cache_dir: Path | str,
        *,
        version: str = KAFKA_VERSION,
        heap: str = DEFAULT_HEAP,
        sasl: SaslPlainUser | None = None,
    ) -> None:
        self.port = port
        self.data_dir = Path(data_dir).resolve()
        self.cache_dir = Path(cache_dir)
        self.version = version
        self.heap = heap
        self.sasl = sasl

    @classmethod
    def from_settings(
        cls, settings: Settings, *, port: int | None = None, data_dir: Path | str | None = None
    ) -> LocalBroker:
        """The broker ``xrec broker`` and the demo use: ``$XREC_HOME/broker`` on ``XREC_BROKER_PORT``.

        With ``XREC_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT`` and PLAIN credentials set, the local broker
        requires those credentials, so clients built from the same settings connect.
        """
        return cls(
            port=settings.broker_port if port is None else port,
            data_dir=data_dir if data_dir is not None else default_data_dir(settings),
            cache_dir=default_cache_dir(settings),
            version=settings.kafka_version,
            sasl=_sasl_from_settings(settings),
        )

    # paths
    @property
    def properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "broker.json"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "kraft"

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def _read_state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return {}

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def _running_pid(self) -> int | None:
        pid = self._read_state().get("pid")
        if not isinstance(pid, int) or not pid_alive(pid):
            return None
        cmd = _cmdline(pid)
        if cmd is not None and (str(self.properties_file) not in cmd or "kafka.Kafka" not in cmd):
            return None  # the pid was reused by something else
        return pid

    def status(self) -> BrokerStatus:
        state = self._read_state()
        pid = self._running_pid()
        return BrokerStatus(
            running=pid is not None,
            pid=pid,
            port=int(state.get("port", self.port)),  # the last port used, when this data dir has run before
            version=str(state.get("version", self.version)) if pid else self.version,
            data_dir=str(self.data_dir),
            log_file=str(self.log_file),
            security_protocol=str(state.get("security_protocol", "")) if pid else self._security_protocol,
        )

    @property
    def _security_protocol(self) -> str:
        return "SASL_PLAINTEXT" if self.sasl else "PLAINTEXT"

    def client_kwargs(self, port: int | None = None) -> dict[str, Any]:
        """aiokafka kwargs that reach this broker (with its SASL user when it has one)."""
        kwargs: dict[str, Any] = {"bootstrap_servers": f"{HOST}:{port or self.port}"}
        if self.sasl:
            kwargs.update(
                security_protocol="SASL_PLAINTEXT",
                sasl_mechanism="PLAIN",
                sasl_plain_username=self.sasl.username,
                sasl_plain_password=self.sasl.password,
            )
        return kwargs

    def start(self, *, timeout_s: float = 90.0) -> StartReport:
        """Fetch the jars (once), format storage (once), start the broker and wait until it answers."""
        started = time.monotonic()
        java = find_java()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.data_dir / ".start.lock"):  # two starters of one data dir: the second finds it running
            return self._start_locked(java, started, timeout_s)

    def _start_locked(self, java: str, started: float, timeout_s: float) -> StartReport:
        current = self.status()
        if current.running:
            return StartReport(
                current, already_running=True, downloaded=False, formatted=False, seconds=time.monotonic() - started
            )
        leftovers = kafka_java_pids(self.data_dir)
        if leftovers:
            raise BrokerError(
                f"a Kafka java process (pid {leftovers[0]}) already uses {self.data_dir} but is not recorded; stop it first"
            )
        if not port_is_free(self.port):
            raise BrokerError(f"port {self.port} on {HOST} is already in use by another process; choose another port")
        libs, downloaded = fetch_kafka(self.cache_dir, self.version)
        state = self._read_state()
        controller_port = int(state.get("controller_port") or 0)
        if not controller_port or controller_port == self.port or not port_is_free(controller_port):
            controller_port = free_port()
        self._write_config(controller_port)
        formatted = self._format_once(java, libs, state)
        process = self._launch(java, libs)
        state = {
            **self._read_state(),
            "pid": process.pid,
            "port": self.port,
            "controller_port": controller_port,
            "version": self.version,
            "security_protocol": self._security_protocol,
            "started_at": time.time(),
        }
        self._write_state(state)
        self.pid_file.write_text(f"{process.pid}\n")
        try:
            self._wait_ready(process, timeout_s)
        except BaseException:
            self.stop()
            raise
        status = self.status()
        log.info(
            "Kafka %s broker running on %s (pid %s, data %s)", self.version, self.bootstrap, process.pid, self.data_dir
        )
        return StartReport(
            status,
            already_running=False,
            downloaded=downloaded,
            formatted=formatted,
            seconds=time.monotonic() - started,
        )

    def _write_config(self, controller_port: int) -> None:
        props = render_server_properties(
            port=self.port, controller_port=controller_port, log_dir=self.storage_dir, sasl=self.sasl
        )
        self.properties_file.write_text(props)
        self.properties_file.chmod(0o600)  # may hold the SASL password
        render = render_log4j2 if uses_log4j2(self.version) else render_log4j
        self.logging_file.write_text(render(self.log_file))

    @property
    def logging_file(self) -> Path:
        return self.data_dir / ("log4j2.properties" if uses_log4j2(self.version) else "log4j.properties")

    @property
    def logging_option(self) -> str:
        """The JVM option that points the broker's logging backend at its file."""
        if uses_log4j2(self.version):
            return f"-Dlog4j2.configurationFile={self.logging_file}"
        return f"-Dlog4j.configuration=file:{self.logging_file}"

    def _format_once(self, java: str, libs: Path, state: dict[str, Any]) -> bool:
        if (self.storage_dir / "meta.properties").is_file():
            return False
        cluster_id = str(state.get("cluster_id") or new_cluster_id())
        cmd = [
            java, "-Xmx256m", self.logging_option,
            "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format",
            "-t", cluster_id, "-c", str(self.properties_file),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise BrokerError(
                f"formatting KRaft storage in {self.storage_dir} failed: {(done.stdout + done.stderr).strip()[-800:]}"
            )
        self._write_state({**state, "cluster_id": cluster_id})
        log.info("formatted KRaft storage in %s (cluster id %s)", self.storage_dir, cluster_id)
        return True

    def _launch(self, java: str, libs: Path) -> subprocess.Popen[bytes]:
        cmd = [
            java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true", f"-Dkafka.logs.dir={self.data_dir}",
            self.logging_option,
            "-cp", f"{libs}/*", "kafka.Kafka", str(self.properties_file),
        ]  # fmt: skip
        with (self.data_dir / "broker.out").open("ab") as out:
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last_error = "the port never answered"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BrokerError(
                    f"the Kafka broker exited with code {process.returncode} while starting; see {self.log_file} and {self.data_dir / 'broker.out'}{self._log_tail()}"
                )
            if _port_answers(self.port):
                try:
                    _probe_metadata(self.client_kwargs())
                    return
                except Exception as exc:  # not ready yet: retry until the deadline
                    last_error = f"metadata request failed: {type(exc).__name__}: {exc}"
            time.sleep(0.25)
        raise BrokerError(
            f"the Kafka broker on {self.bootstrap} did not become ready within {timeout_s:.0f}s ({last_error}); see {self.log_file}{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_file.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        return "\n" + "\n".join(text) if text else ""

    def stop(self, *, timeout_s: float = 30.0) -> bool:
        """SIGTERM the broker's process group, wait, then SIGKILL; return whether it was running."""
        pid = self._running_pid()
        pids = sorted({*kafka_java_pids(self.data_dir), *([pid] if pid else [])})
        if not pids:
            self.pid_file.unlink(missing_ok=True)
            return False
        for target in pids:
            _signal_group(target, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.1)
        survivors = [p for p in pids if pid_alive(p)]
        if survivors:
            log.warning("Kafka broker %s did not stop within %.0fs; killing it", survivors, timeout_s)
            for target in survivors:
                _signal_group(target, signal.SIGKILL)
            kill_deadline = time.monotonic() + 10
            while time.monotonic() < kill_deadline and any(pid_alive(p) for p in survivors):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        state = self._read_state()
        state.pop("pid", None)
        if self.state_file.exists():
            self._write_state(state)
        log.info("Kafka broker in %s stopped", self.data_dir)
        return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the broker's process group (it leads its own session), or just the pid if that fails."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _probe_metadata(kwargs: dict[str, Any]) -> None:
    """A real metadata request through aiokafka's admin client: the broker answers and lists itself."""
    from aiokafka.admin import AIOKafkaAdminClient

    from xrec.kafka import run_blocking

    async def probe() -> None:
        admin = AIOKafkaAdminClient(**kwargs, request_timeout_ms=5000)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            if not cluster.get("brokers"):
                raise BrokerError("the metadata response lists no broker yet")
        finally:
            await admin.close()

    run_blocking(probe, timeout_s=30)


# --- settings glue ----------------------------------------------------------------------------


def default_cache_dir(settings: Settings) -> Path:
    """Kafka jars are shared by every data dir of the machine: ``$XREC_HOME/kafka``."""
    return settings.home_path / "kafka"


def default_data_dir(settings: Settings) -> Path:
    return settings.home_path / "broker"


def _sasl_from_settings(settings: Settings) -> SaslPlainUser | None:
    protocol = settings.kafka_security_protocol.strip().upper()
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SASL_PLAINTEXT" and settings.kafka_sasl_mechanism.strip().upper() == "PLAIN":
        return SaslPlainUser(settings.kafka_sasl_username, settings.kafka_sasl_password)
    raise BrokerError(
        f"the local broker speaks PLAINTEXT or SASL_PLAINTEXT with PLAIN, not {protocol} "
        f"{settings.kafka_sasl_mechanism}; point XREC_KAFKA_BOOTSTRAP at a cluster that does"
    )


def ensure_broker(settings: Settings) -> str:
    """The bootstrap string to use: ``XREC_KAFKA_BOOTSTRAP`` if set, else the local broker (started if needed)."""
    if settings.kafka_bootstrap:
        log.info("using the existing Kafka cluster at %s (XREC_KAFKA_BOOTSTRAP)", settings.kafka_bootstrap)
        return settings.kafka_bootstrap
    broker = LocalBroker.from_settings(settings)
    report = broker.start()
    if report.already_running:
        log.info("reusing the local Kafka broker on %s (pid %s)", report.status.bootstrap, report.status.pid)
    return report.status.bootstrap
