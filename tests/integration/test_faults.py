"""Faults survived with real worker processes and a real broker: kill -9, broker restart, a lost worker,
a restart of the Qdrant server the worker stores its items in.

Each test streams a few thousand events over ~50 users through ``xrec worker --no-encoder``, injects
one fault, then reads the profile changelog (the state a restarted or surviving worker restores from)
and checks every user's stored profile against a clean replay of that user's events computed here
with ``UserProfile``: same count of applied events, the same event-id fingerprints, the same vectors
within float tolerance. Each test prints its figures: events sent, events reflected, lost,
duplicates absorbed.
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from tests.conftest import start_qdrant_server
from tests.integration.conftest import WorkerEnv, WorkerProcess, lists_for
from xrec.broker import LocalBroker, default_cache_dir, free_port
from xrec.config import Settings
from xrec.events import parse_vector
from xrec.kafka import create_topics, run_blocking
from xrec.profile import ProfileParams, UserProfile, event_fingerprint, event_weight
from xrec.store.edge import EdgeStore
from xrec.topics import topic_specs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DIM = 16
N_ITEMS = 48
N_USERS = 50
TYPES = ["view", "click", "click", "like", "add_to_cart", "purchase", "skip", "dislike", "review"]
WORKER_ARGS = ("--no-encoder", "--dim", str(DIM))
#: A silent (killed) worker's partitions move after this; Kafka's default would make tests wait 45 s.
SESSION_TIMEOUT_S = "8"


# --- data ---------------------------------------------------------------------------------------


def make_items(n: int = N_ITEMS, seed: int = 1) -> list[dict[str, Any]]:
    """Items on eight directions with noise, in four languages, each carrying its own vector."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        v = np.zeros(DIM)
        v[i % 8] = 1.0
        v += 0.3 * rng.standard_normal(DIM)
        items.append(
            {"item_id": f"I{i}", "title": f"item {i}", "lang": ["en", "de", "ja", "es"][i % 4], "vector": v.tolist()}
        )
    return items


def make_events(per_user: int, users: int = N_USERS, seed: int = 2, prefix: str = "U") -> list[dict[str, Any]]:
    """Users' events interleaved at random; each user's timestamps increase, an hour or two in the past."""
    rng = random.Random(seed)
    base = int(time.time() * 1000) - 3 * 3_600_000
    queues = {
        f"{prefix}{u}": [
            _event(f"{prefix}{u}", j, rng.choice(TYPES), f"I{rng.randrange(N_ITEMS)}", base + u * 7 + j * 60_000, rng)
            for j in range(per_user)
        ]
        for u in range(users)
    }
    out: list[dict[str, Any]] = []
    while queues:
        user = rng.choice(sorted(queues))
        out.append(queues[user].pop(0))
        if not queues[user]:
            del queues[user]
    return out


def _event(user: str, j: int, etype: str, item: str, ts: int, rng: random.Random) -> dict[str, Any]:
    event: dict[str, Any] = {"event_id": f"{user}-e{j}", "user_id": user, "item_id": item, "type": etype, "ts": ts}
    if etype == "review":
        event["rating"] = rng.choice([1, 2, 4, 5])
    return event


def replay(events: list[dict[str, Any]], items: list[dict[str, Any]], settings: Settings) -> dict[str, UserProfile]:
    """What each user's profile must be: their events applied once each, in order, as the engine does."""
    vectors = {i["item_id"]: parse_vector(i["vector"], DIM) for i in items}
    langs = {i["item_id"]: i["lang"] for i in items}
    params = ProfileParams.from_settings(settings)
    window = max(16, settings.dedup_window)
    profiles: dict[str, UserProfile] = {}
    for e in events:
        profile = profiles.setdefault(e["user_id"], UserProfile(dim=DIM))
        if not profile.remember_event(e["event_id"], window):
            continue
        weight = event_weight(e["type"], e.get("rating"), settings.weights)
        disliked = e["type"] == "dislike" or (e["type"] == "review" and weight < 0)
        item = e["item_id"]
        profile.observe(vectors[item], weight, e["ts"], item, langs[item], params, dislike=disliked)
    return profiles


@dataclass
class Comparison:
    """Stored profiles (latest changelog value per user) against the clean replay."""

    sent: int
    reflected: int = 0
    lost: int = 0
    applied_twice: int = 0
    mismatched: list[str] = field(default_factory=list)

    def figures(self, **extra: Any) -> str:
        parts = [f"events sent={self.sent}", f"reflected={self.reflected}", f"lost={self.lost}"]
        parts += [f"applied twice={self.applied_twice}"] + [f"{k}={v}" for k, v in extra.items()]
        return ", ".join(parts)


def compare(stored: dict[str, UserProfile], expected: dict[str, UserProfile], sent: int) -> Comparison:
    result = Comparison(sent=sent)
    for user, want in expected.items():
        got = stored.get(user)
        if got is None:
            result.lost += want.events
            result.mismatched.append(f"{user}: no stored profile")
            continue
        fingerprints = set(got.event_ids)
        present = sum(1 for fp in want.event_ids if fp in fingerprints)
        result.reflected += present
        result.lost += want.events - present
        result.applied_twice += max(0, got.events - want.events)
        problem = profile_difference(got, want)
        if problem:
            expected_ids = list(want.event_ids)
            missing = [i for i, fp in enumerate(expected_ids) if fp not in fingerprints]
            where = f"; missing event #{missing[:5]} of {len(expected_ids)}" if missing else ""
            result.mismatched.append(f"{user}: {problem}{where}")
    return result


def profile_difference(got: UserProfile, want: UserProfile, tol: float = 1e-4) -> str | None:
    """The first way two profiles differ beyond float tolerance, or None."""
    if got.events != want.events:
        return f"{got.events} events applied, expected {want.events}"
    if list(got.event_ids) != list(want.event_ids):
        return "event fingerprints differ"
    if (got.last_ts, got.anchors, list(got.seen), list(got.disliked)) != (
        want.last_ts,
        want.anchors,
        list(want.seen),
        list(want.disliked),
    ):
        return "clock, anchors, seen or disliked items differ"
    if got.centroids.shape != want.centroids.shape or not np.allclose(got.centroids, want.centroids, atol=tol):
        gap = (
            float(np.abs(got.centroids - want.centroids).max()) if got.centroids.shape == want.centroids.shape else None
        )
        return f"centroids differ ({got.centroids.shape} vs {want.centroids.shape}, largest gap {gap})"
    if not np.allclose(got.weights, want.weights, rtol=tol, atol=1e-9):
        return f"weights differ: {got.weights} vs {want.weights}"
    if (got.negative is None) != (want.negative is None) or (
        got.negative is not None and not np.allclose(got.negative, want.negative, atol=tol)  # type: ignore[arg-type]
    ):
        return "negative direction differs"
    if not np.isclose(got.negative_weight, want.negative_weight, rtol=tol, atol=1e-9):
        return "negative weight differs"
    if set(got.languages) != set(want.languages) or not all(
        np.isclose(got.languages[k], want.languages[k], rtol=tol) for k in want.languages
    ):
        return "language histogram differs"
    return None


# --- Kafka helpers ------------------------------------------------------------------------------


def changelog_topic(env: WorkerEnv) -> str:
    return f"{env.env['XREC_APP_ID']}-profiles-changelog"


def read_latest(
    bootstrap: str, topic: str, timeout_s: float = 30.0, isolation_level: str = "read_uncommitted"
) -> dict[bytes, bytes | None]:
    """The latest value per key of a whole topic (read to its end offsets); ``read_committed`` skips aborted writes."""

    async def read() -> dict[bytes, bytes | None]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None, isolation_level=isolation_level
        )
        await consumer.start()
        latest: dict[bytes, bytes | None] = {}
        try:
            partitions = consumer.partitions_for_topic(topic)
            deadline = time.monotonic() + timeout_s
            while not partitions and time.monotonic() < deadline:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                return latest
            tps = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            while time.monotonic() < deadline:
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= ends[tp] for tp in tps):
                    break
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for r in records:
                        if r.key is not None:
                            latest[r.key] = r.value
        finally:
            await consumer.stop()
        return latest

    return asyncio.run(read())


def stored_profiles(
    bootstrap: str, env: WorkerEnv, isolation_level: str = "read_uncommitted"
) -> dict[str, UserProfile]:
    latest = read_latest(bootstrap, changelog_topic(env), isolation_level=isolation_level)
    return {k.decode(): UserProfile.from_bytes(v) for k, v in latest.items() if v}


def wait_reflected(
    bootstrap: str,
    env: WorkerEnv,
    expected: dict[str, UserProfile],
    timeout_s: float = 120.0,
    workers: tuple[WorkerProcess, ...] = (),
    isolation_level: str = "read_uncommitted",
) -> dict[str, UserProfile]:
    """Poll the changelog until every user's stored profile holds all their events (or time runs out)."""
    deadline = time.monotonic() + timeout_s
    stored: dict[str, UserProfile] = {}
    while time.monotonic() < deadline:
        stored = stored_profiles(bootstrap, env, isolation_level)
        if all(u in stored and stored[u].events >= p.events for u, p in expected.items()):
            return stored
        for w in workers:
            assert w.exited() is None, f"worker exited with {w.exited()}:\n{w.log_tail()}"
        time.sleep(1.0)
    return stored


class BackgroundProducer:
    """Sends events keyed by user in a thread at a steady pace; retries a send that fails (as producers do)."""

    def __init__(self, bootstrap: str, topic: str, events: list[dict[str, Any]], per_second: float) -> None:
        self.bootstrap, self.topic, self.events, self.per_second = bootstrap, topic, events, per_second
        self.sent = 0
        self.retried = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-producer", daemon=True)

    def start(self) -> BackgroundProducer:
        self._thread.start()
        return self

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(10)
            raise AssertionError(f"the producer did not finish in {timeout_s:.0f}s ({self.sent} sent)")
        if self.error is not None:
            raise AssertionError(f"the producer failed after {self.sent} events: {self.error!r}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._send_all())
        except BaseException as exc:  # reported by join()
            self.error = exc

    async def _send_all(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, request_timeout_ms=10_000)
        await self._start(producer)
        try:
            started = time.monotonic()
            for i, event in enumerate(self.events):
                if self._stop.is_set():
                    return
                delay = started + i / self.per_second - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._send(producer, event)
                self.sent += 1
        finally:
            await producer.stop()

    async def _start(self, producer: AIOKafkaProducer) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                await producer.start()
                return
            except KafkaError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def _send(self, producer: AIOKafkaProducer, event: dict[str, Any]) -> None:
        key, value = event["user_id"].encode(), orjson.dumps(event)
        deadline = time.monotonic() + 120
        while True:
            try:
                await producer.send_and_wait(self.topic, value, key=key)
                return
            except KafkaError:  # the broker is away: send the same event again (a possible duplicate)
                if time.monotonic() > deadline or self._stop.is_set():
                    raise
                self.retried += 1
                await asyncio.sleep(0.5)


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, worker: WorkerProcess | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if worker is not None and worker.exited() is not None:
            raise AssertionError(f"worker exited with {worker.exited()} while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}{_state_of(worker)}")


def _state_of(worker: WorkerProcess | None) -> str:
    """What the worker says about itself, for a failure message: /readyz and the end of its log."""
    if worker is None:
        return ""
    try:
        status, body = worker.get_json("/readyz")
        ready = f"/readyz {status} {body}"
    except Exception as exc:  # it may not answer at all: that is worth showing too
        ready = f"/readyz did not answer: {type(exc).__name__}: {exc}"
    return f"\n{ready}\nlog {worker.log_path}:\n{worker.log_tail(40)}"


def second_round(seed: int) -> list[dict[str, Any]]:
    """More events of the same users: new event ids, each user's 20 minutes after their first round."""
    events = make_events(per_user=20, seed=seed)
    for e in events:
        e["event_id"] = e["event_id"].replace("-e", "-f")
        e["ts"] += 20 * 60_000
    return events


def lists_answering_the_last_events(env: WorkerEnv, events: list[dict[str, Any]]) -> tuple[list[Any], set[str]]:
    """The recommendations topic once every user of ``events`` has a list for their last event (or 60 s
    passed), and the users who have one."""
    last = {e["user_id"]: e["event_id"] for e in events}

    def answered(messages: list[Any]) -> set[str]:
        return {u for u in last if any(m and m["trigger_event_id"] == last[u] for m in lists_for(messages, u))}

    msgs = env.consume(env.topics["recommendations"], lambda ms: answered(ms) == set(last), timeout_s=60)
    return msgs, answered(msgs)


def metric_sum(worker: WorkerProcess, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when the worker does not answer)."""
    return worker.metrics_or_empty().sum(name, **labels)


def index_items(env: WorkerEnv, worker: WorkerProcess, items: list[dict[str, Any]]) -> None:
    env.produce_json(env.topics["items"], "item_id", items)
    wait_for(
        "items indexed", lambda: metric_sum(worker, "xrec_items_indexed") >= len(items), timeout_s=60, worker=worker
    )


def store_count(path: Path) -> tuple[int, int]:
    """Points in an edge store directory and how many of them fetch back with a vector (after the worker stopped)."""

    async def look() -> tuple[int, int]:
        store = EdgeStore(path / "xrec_items", dim=DIM)
        try:
            fetched = await store.fetch([f"I{i}" for i in range(N_ITEMS)])
            return await store.count(), sum(1 for s in fetched.values() if len(s.vector) == DIM)
        finally:
            await store.close()

    return asyncio.run(look())


def assert_no_loss(result: Comparison, what: str, env: WorkerEnv) -> None:
    """Nothing lost, nothing applied twice, and no good event dead-lettered (a failed batch would be)."""
    dead = [orjson.loads(m.value) for m in env.consume(env.topics["dlq"], lambda ms: False, timeout_s=3)]
    print(f"\n[{what}] {result.figures(dead_lettered=len(dead))}")
    assert not dead, (
        f"good events were dead-lettered: {Counter(d['error_class'] for d in dead)}: {dead[0]['error'][:300]}"
    )
    assert result.lost == 0, result.mismatched[:5]
    assert result.applied_twice == 0, result.mismatched[:5]
    assert not result.mismatched, result.mismatched[:5]
    assert result.reflected == result.sent


def worker_settings(env: WorkerEnv) -> Settings:
    return Settings.from_env({k: v for k, v in env.env.items() if k.startswith("XREC_")})


def committed_offsets(env: WorkerEnv, topic: str) -> dict[int, int | None]:
    """The worker group's committed offset of each partition of ``topic`` (None: never committed)."""

    async def read() -> dict[int, int | None]:
        consumer = AIOKafkaConsumer(bootstrap_servers=env.bootstrap, group_id=worker_settings(env).app_id)
        await consumer.start()
        try:
            partitions = range(worker_settings(env).partitions)  # the events topics are created with it
            return {p: await consumer.committed(TopicPartition(topic, p)) for p in partitions}
        finally:
            await consumer.stop()

    return run_blocking(read, timeout_s=30)


# --- kill -9 ------------------------------------------------------------------------------------


def test_a_worker_killed_mid_stream_restarts_with_every_event_applied_exactly_once(worker_env: WorkerEnv) -> None:
    env = worker_env
    bootstrap = env.bootstrap
    items = make_items()
    events = make_events(per_user=60)  # 3000 events
    redelivered = random.Random(3).sample(events[:1500], 150)  # a producer that retried: same ids again
    env.env["XREC_SESSION_TIMEOUT_S"] = SESSION_TIMEOUT_S
    first = env.start_worker(*WORKER_ARGS)
    index_items(env, first, items)

    producer = BackgroundProducer(bootstrap, env.topics["events"], events, per_second=600).start()
    try:
        wait_for(
            "a third of the stream processed",
            lambda: metric_sum(first, "xrec_events_total", outcome="processed") >= len(events) // 3,
            timeout_s=120,
            worker=first,
        )
        processed_before_kill = metric_sum(first, "xrec_events_total", outcome="processed")
        first.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        assert first.exited() == -signal.SIGKILL
        second = env.start_worker(*WORKER_ARGS)
        ready_after = time.monotonic() - killed_at
        producer.join(timeout_s=120)
    finally:
        producer.stop()
    env.produce_json(env.topics["events"], "user_id", redelivered)

    expected = replay(events, items, worker_settings(env))
    stored = wait_reflected(bootstrap, env, expected, workers=(second,))
    wait_for(
        "the re-sent events counted",
        lambda: metric_sum(second, "xrec_events_total", outcome="duplicate") >= len(redelivered),
        timeout_s=60,
        worker=second,
    )
    duplicates = metric_sum(second, "xrec_events_total", outcome="duplicate")
    processed_after = metric_sum(second, "xrec_events_total", outcome="processed")
    result = compare(stored, expected, len(events))
    print(
        f"\n[kill -9] {result.figures()}, processed before the kill≈{processed_before_kill:.0f}, "
        f"processed after the restart={processed_after:.0f}, duplicates absorbed={duplicates:.0f} "
        f"(re-sent on purpose={len(redelivered)}, redelivered by the crash={duplicates - len(redelivered):.0f}), "
        f"restarted worker ready {ready_after:.1f}s after the kill (session timeout {SESSION_TIMEOUT_S}s), "
        f"producer re-sends after a send error={producer.retried}"
    )
    assert_no_loss(result, "kill -9", env)
    assert duplicates >= len(redelivered)

    assert second.stop() == 0, second.log_tail()
    count, with_vectors = store_count(env.tmp / "store")
    print(f"[kill -9] edge store reopened: {count} points, {with_vectors} fetched with vectors (expected {N_ITEMS})")
    assert (count, with_vectors) == (N_ITEMS, N_ITEMS)


# --- broker restart -----------------------------------------------------------------------------


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker only this test uses, so it can be stopped and started again on the same port."""
    broker = LocalBroker(
        port=free_port(), data_dir=tmp_path / "kafka", cache_dir=default_cache_dir(Settings.from_env())
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_the_worker_resumes_by_itself_after_the_broker_restarts_and_loses_nothing(
    own_broker: LocalBroker, tmp_path: Path
) -> None:
    env = WorkerEnv(bootstrap=own_broker.bootstrap, tmp=tmp_path, env=isolated_env(own_broker.bootstrap, "brk"))
    try:
        items = make_items()
        events = make_events(per_user=40)  # 2000 events
        worker = env.start_worker(*WORKER_ARGS)
        index_items(env, worker, items)
        producer = BackgroundProducer(own_broker.bootstrap, env.topics["events"], events, per_second=250).start()
        try:
            wait_for("some events processed", lambda: producer.sent >= 400, timeout_s=60, worker=worker)
            down_at = time.monotonic()
            own_broker.stop()
            time.sleep(5)  # the worker and the producer both see the broker gone
            own_broker.start()
            up_after = time.monotonic() - down_at
            producer.join(timeout_s=240)
        finally:
            producer.stop()
        expected = replay(events, items, worker_settings(env))
        stored = wait_reflected(own_broker.bootstrap, env, expected, timeout_s=180, workers=(worker,))
        duplicates = metric_sum(worker, "xrec_events_total", outcome="duplicate")
        result = compare(stored, expected, len(events))
        print(
            f"\n[broker restart] {result.figures()}, broker away {up_after:.1f}s, producer retries={producer.retried}, "
            f"duplicates absorbed={duplicates:.0f}, worker restarted=no (pid {worker.pid} still running)"
        )
        assert worker.exited() is None, worker.log_tail()
        assert_no_loss(result, "broker restart", env)
        # and it still answers: a fresh event after the restart publishes a list
        fresh = {"event_id": "after-restart", "user_id": "U0", "item_id": "I3", "type": "click", "ts": _now()}
        env.produce_json(env.topics["events"], "user_id", [fresh])
        msgs = env.consume(
            env.topics["recommendations"],
            lambda ms: any(lst and lst["trigger_event_id"] == "after-restart" for lst in lists_for(ms, "U0")),
            timeout_s=60,
        )
        assert any(lst and lst["trigger_event_id"] == "after-restart" for lst in lists_for(msgs, "U0"))
    finally:
        for w in env.workers:
            w.stop()


# --- Qdrant server restart ----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_qdrant_server_restart_while_the_worker_runs_is_said_plainly_and_loses_nothing(
    worker_env: WorkerEnv, protocol: str
) -> None:
    env = worker_env
    server = start_qdrant_server(env.tmp / "qdrant")  # its own: this test stops it
    try:
        env.use_qdrant_server(server)
        env.env["XREC_QDRANT_PREFER_GRPC"] = str(protocol == "grpc").lower()
        items = make_items()
        worker = env.start_worker(*WORKER_ARGS)
        index_items(env, worker, items)
        first = make_events(per_user=20, seed=5)
        env.produce_json(env.topics["events"], "user_id", first)
        wait_reflected(env.bootstrap, env, replay(first, items, worker_settings(env)), timeout_s=90, workers=(worker,))

        server.stop()
        down_at = time.monotonic()
        second = second_round(seed=6)
        env.produce_json(env.topics["events"], "user_id", second)
        wait_for(
            "/readyz to say the store is unreachable",
            lambda: worker.get_json("/readyz")[1]["checks"]["store_reachable"] is False,
            timeout_s=60,
            worker=worker,
        )
        assert worker.get_json("/readyz")[0] == 503
        assert metric_sum(worker, "xrec_store_reachable") == 0
        said = [line for line in worker.log_tail(400).splitlines() if "is unreachable" in line]
        assert said and server.url in said[0], worker.log_tail(40)
        time.sleep(10)  # events wait in Kafka while it is away, and the clients back off
        server.start()
        away_s = time.monotonic() - down_at

        everything = first + second
        expected = replay(everything, items, worker_settings(env))
        stored = wait_reflected(env.bootstrap, env, expected, timeout_s=120, workers=(worker,))
        result = compare(stored, expected, len(everything))
        _, answered = lists_answering_the_last_events(env, second)
        print(
            f"\n[qdrant restart, {protocol}] {result.figures()}, server away {away_s:.1f}s, "
            f"users with a list for their last event {len(answered)}/{N_USERS}, worker restarted=no"
        )
        assert worker.exited() is None, worker.log_tail()
        assert_no_loss(result, f"qdrant restart, {protocol}", env)
        assert len(answered) == N_USERS
        wait_for("/readyz 200 again", lambda: worker.get_json("/readyz")[0] == 200, timeout_s=30, worker=worker)
        assert metric_sum(worker, "xrec_store_reachable") == 1
        assert "answers again" in worker.log_tail(400)
    finally:
        for w in env.workers:
            w.stop()
        server.stop()


def isolated_env(bootstrap: str, tag: str) -> dict[str, str]:
    tag = f"{tag}-{uuid.uuid4().hex[:6]}"
    return {
        "XREC_KAFKA_BOOTSTRAP": bootstrap,
        "XREC_APP_ID": f"xrec-test-{tag}",
        "XREC_PARTITIONS": "2",
        "XREC_BATCH_WITHIN_MS": "20",
        "XREC_UNKNOWN_ITEM_WAIT_S": "2",
        "XREC_SESSION_TIMEOUT_S": SESSION_TIMEOUT_S,
        **{
            f"XREC_TOPIC_{name.upper()}": f"{tag}.{name}"
            for name in ("items", "events", "control", "recommendations", "dlq")
        },
    }


def _now() -> int:
    return int(time.time() * 1000)


# --- a worker lost from a group of two ----------------------------------------------------------


def assigned_partitions(worker: WorkerProcess, topic: str) -> set[int]:
    """Partitions of ``topic`` the worker reports lag for (it exports one gauge per owned partition)."""
    return {
        int(labels["partition"])
        for name, labels, _ in worker.metrics_or_empty().samples
        if name == "xrec_consumer_lag" and labels.get("topic") == topic
    }


@pytest.mark.parametrize("store", ["edge", "qdrant-server"])
def test_a_killed_workers_partitions_move_to_the_survivor_which_restores_profiles_and_continues(
    worker_env: WorkerEnv, store: str, request: pytest.FixtureRequest
) -> None:
    env = worker_env
    env.env["XREC_SESSION_TIMEOUT_S"] = SESSION_TIMEOUT_S
    if store == "qdrant-server":  # one shared collection: b is ready once the items a indexed are committed
        env.use_qdrant_server(request.getfixturevalue("qdrant_server"))
    bootstrap = env.bootstrap
    items = make_items()
    a = env.start_worker(*WORKER_ARGS, store_path=env.tmp / "store-a")
    index_items(env, a, items)
    b = env.start_worker(*WORKER_ARGS, store_path=env.tmp / "store-b")
    if store == "edge":  # its own store, its own item group: it indexes every item itself
        wait_for("items indexed by b", lambda: metric_sum(b, "xrec_items_indexed") >= N_ITEMS, timeout_s=60, worker=b)
    events_topic = env.topics["events"]
    wait_for(
        "one partition each",
        lambda: len(assigned_partitions(a, events_topic)) == 1 and len(assigned_partitions(b, events_topic)) == 1,
        timeout_s=90,
        worker=b,
    )
    owned_by_b = assigned_partitions(b, events_topic)

    first_half = make_events(per_user=20, seed=5)
    env.produce_json(events_topic, "user_id", first_half)
    expected_first = replay(first_half, items, worker_settings(env))
    wait_reflected(bootstrap, env, expected_first, timeout_s=90, workers=(a, b))
    b_processed = metric_sum(b, "xrec_events_total", outcome="processed")
    assert b_processed > 0, "worker b processed nothing before it was killed"

    b.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(
        "a owns every partition",
        lambda: assigned_partitions(a, events_topic) == {0, 1} and a.get_json("/readyz")[0] == 200,
        timeout_s=120,
        worker=a,
    )
    moved_after = time.monotonic() - killed_at

    second_half = second_round(seed=6)
    env.produce_json(events_topic, "user_id", second_half)
    everything = first_half + second_half
    expected = replay(everything, items, worker_settings(env))
    stored = wait_reflected(bootstrap, env, expected, timeout_s=120, workers=(a,))
    result = compare(stored, expected, len(everything))

    msgs, answered = lists_answering_the_last_events(env, second_half)
    moved_users = {m.key.decode() for m in msgs if m.partition in owned_by_b}
    print(
        f"\n[lost worker, {store}] {result.figures()}, b processed {b_processed:.0f} before the kill, partitions {owned_by_b} "
        f"moved to a in {moved_after:.1f}s (session timeout {SESSION_TIMEOUT_S}s), users on them {len(moved_users)}, "
        f"users with a list for their last event {len(answered)}/{N_USERS}"
    )
    assert moved_users, "no user lived on the killed worker's partition"
    assert len(answered) == N_USERS
    assert_no_loss(result, f"lost worker, {store}", env)
    # a has restored b's users from the changelog: each of their profiles continued from the first half
    assert all(stored[u].events == expected[u].events for u in moved_users)


# --- an event waiting for its item --------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_an_event_waiting_for_its_item_survives_a_stop_and_is_applied_when_the_item_arrives(
    worker_env: WorkerEnv, sig: signal.Signals
) -> None:
    env = worker_env
    env.env.update(XREC_SESSION_TIMEOUT_S=SESSION_TIMEOUT_S, XREC_UNKNOWN_ITEM_WAIT_S="300")
    items = make_items()
    first = env.start_worker(*WORKER_ARGS)
    index_items(env, first, items)
    base = _now() - 60_000
    early = {"event_id": "W-early", "user_id": "W", "item_id": "LATE", "type": "like", "ts": base}
    later = {"event_id": "W-later", "user_id": "W", "item_id": "I1", "type": "click", "ts": base + 1000}
    env.produce_json(env.topics["events"], "user_id", [early, later])
    env.consume(
        env.topics["recommendations"],
        lambda ms: any(lst and lst["trigger_event_id"] == "W-later" for lst in lists_for(ms, "W")),
        timeout_s=60,
    )
    time.sleep(3)  # several commit intervals: what the worker may commit is committed now
    stopping = time.monotonic()
    code = first.stop(sig, timeout_s=60)
    stopped_in = time.monotonic() - stopping
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0), first.log_tail()
    committed = committed_offsets(env, env.topics["events"])  # must not pass W-early: it never applied

    second = env.start_worker(*WORKER_ARGS)
    late = {"item_id": "LATE", "title": "late item", "lang": "en", "vector": items[5]["vector"]}
    env.produce_json(env.topics["items"], "item_id", [late])
    expected = replay([early, later], [*items, late], worker_settings(env))
    stored = wait_reflected(env.bootstrap, env, expected, timeout_s=60, workers=(second,))
    got = stored.get("W")
    print(
        f"\n[waiting event + {sig.name}] stopped in {stopped_in:.1f}s, events sent=2, "
        f"reflected={got.events if got else 0}, "
        f"early event applied={bool(got and event_fingerprint('W-early') in got.event_ids)}, "
        f"duplicates absorbed={metric_sum(second, 'xrec_events_total', outcome='duplicate'):.0f}, "
        f"committed offsets of the events topic after the stop={committed}"
    )
    assert got is not None and event_fingerprint("W-early") in got.event_ids, (
        f"the waiting event was lost (committed offsets after the stop: {committed}); second worker:\n"
        + second.log_tail()
    )
    assert got.events == 2
    dlq = env.consume(env.topics["dlq"], lambda ms: False, timeout_s=3)
    assert dlq == []


def test_an_event_waiting_for_its_item_survives_a_rebalance_when_a_second_worker_joins(worker_env: WorkerEnv) -> None:
    env = worker_env
    env.env.update(XREC_SESSION_TIMEOUT_S=SESSION_TIMEOUT_S, XREC_UNKNOWN_ITEM_WAIT_S="300")
    items = make_items()
    a = env.start_worker(*WORKER_ARGS, store_path=env.tmp / "store-a")
    index_items(env, a, items)
    base = _now() - 60_000
    waiting = [
        {"event_id": f"R{u}-early", "user_id": f"R{u}", "item_id": "LATE", "type": "like", "ts": base} for u in range(6)
    ]
    later = [
        {"event_id": f"R{u}-later", "user_id": f"R{u}", "item_id": "I2", "type": "click", "ts": base + 1000}
        for u in range(6)
    ]
    env.produce_json(env.topics["events"], "user_id", waiting + later)
    env.consume(
        env.topics["recommendations"],
        lambda ms: all(
            any(x and x["trigger_event_id"] == f"R{u}-later" for x in lists_for(ms, f"R{u}")) for u in range(6)
        ),
        timeout_s=60,
    )
    time.sleep(2)
    b = env.start_worker(*WORKER_ARGS, store_path=env.tmp / "store-b")
    events_topic = env.topics["events"]
    wait_for(
        "one partition each",
        lambda: len(assigned_partitions(a, events_topic)) == 1 and len(assigned_partitions(b, events_topic)) == 1,
        timeout_s=90,
        worker=b,
    )
    late = {"item_id": "LATE", "title": "late item", "lang": "en", "vector": items[5]["vector"]}
    env.produce_json(env.topics["items"], "item_id", [late])
    expected = replay(later + waiting, [*items, late], worker_settings(env))  # a waiting event applies late
    stored = wait_reflected(env.bootstrap, env, expected, timeout_s=60, workers=(a, b))
    result = compare(stored, expected, len(waiting) + len(later))
    dlq = env.consume(env.topics["dlq"], lambda ms: False, timeout_s=3)
    print(
        f"\n[waiting events + rebalance] {result.figures()}, DLQ records={len(dlq)}, duplicates absorbed="
        f"{metric_sum(a, 'xrec_events_total', outcome='duplicate') + metric_sum(b, 'xrec_events_total', outcome='duplicate'):.0f}"
    )
    assert_no_loss(result, "waiting events + rebalance", env)
    assert dlq == []


def test_events_produced_before_the_first_worker_starts_are_all_processed(worker_env: WorkerEnv) -> None:
    env = worker_env
    items = make_items()
    events = make_events(per_user=10, users=20, seed=9)
    run_blocking(lambda: create_topics(env.bootstrap, topic_specs(worker_settings(env))), timeout_s=60)
    env.produce_json(env.topics["items"], "item_id", items)
    env.produce_json(env.topics["events"], "user_id", events)
    worker = env.start_worker(*WORKER_ARGS)
    expected = replay(events, items, worker_settings(env))
    stored = wait_reflected(env.bootstrap, env, expected, timeout_s=60, workers=(worker,))
    result = compare(stored, expected, len(events))
    print(f"\n[backlog before first start] {result.figures()}")
    assert_no_loss(result, "backlog before first start", env)
