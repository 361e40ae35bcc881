"""``xrec produce`` and ``xrec tail`` against the real test broker: files go to their topic keyed right,
bad lines are reported and not sent, and tail prints lists with titles read from the items topic."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

pytestmark = [pytest.mark.timeout(240)]
REPO = Path(__file__).resolve().parents[2]
TS = 1731412486000


def _xrec(env: dict[str, str], *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "xrec.cli", *args], cwd=REPO, env=env, input=stdin, capture_output=True, timeout=120
    )


async def _read_all(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes | None, bytes | None]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    out: list[tuple[bytes | None, bytes | None]] = []
    try:
        for _ in range(40):
            batches = await consumer.getmany(timeout_ms=250)
            out.extend((r.key, r.value) for rs in batches.values() for r in rs)
            if len(out) >= expected:
                break
    finally:
        await consumer.stop()
    return out


@pytest.fixture
def env(kafka_bootstrap: str, topic_factory: Callable[..., str]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("XREC_")}
    return {
        **clean,
        "XREC_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "XREC_TOPIC_ITEMS": topic_factory(compacted=True),
        "XREC_TOPIC_EVENTS": topic_factory(partitions=2),
        "XREC_TOPIC_RECOMMENDATIONS": topic_factory(partitions=2, compacted=True),
    }


async def test_a_csv_of_items_is_sent_keyed_by_item_id_and_a_bad_line_is_reported_by_number(
    env: dict[str, str], tmp_path: Path, kafka_bootstrap: str
) -> None:
    items = tmp_path / "items.csv"
    items.write_text(
        "item_id,title,lang,tags,ts\n"
        f"N1,ジャズ喫茶の名盤,ja,jazz|music,{TS}\n"
        f"N2,Le festival de jazz,fr,jazz,{TS}\n"
        "N3,Broken,en,,yesterday\n"
        f"N4,Kochen im Herbst,de,,{TS}\n",
        encoding="utf-8",
    )
    done = _xrec(env, "produce", "items", str(items), "--json")
    assert done.returncode == 0, done.stderr.decode()
    report = orjson.loads(done.stdout)
    assert (report["sent"], report["skipped"], report["format"]) == (3, 1, "csv")
    assert report["skipped_lines"][0]["line"] == 4 and "bad_timestamp" in report["skipped_lines"][0]["error"]
    assert "line 4: bad_timestamp" in done.stderr.decode()

    records = await _read_all(kafka_bootstrap, env["XREC_TOPIC_ITEMS"], 3)
    assert sorted(k for k, _ in records if k) == [b"N1", b"N2", b"N4"]
    first = orjson.loads(next(v for k, v in records if k == b"N1") or b"{}")
    assert first["tags"] == ["jazz", "music"] and first["ts"] == TS and first["title"] == "ジャズ喫茶の名盤"


async def test_events_from_stdin_are_keyed_by_user_and_strict_mode_fails_on_a_skipped_line(
    env: dict[str, str], kafka_bootstrap: str
) -> None:
    lines = [
        {"event_id": "e1", "user_id": "U1", "item_id": "N1", "type": "click", "ts": TS},
        {"event_id": "e2", "user_id": "U2", "item_id": "N2", "type": "teleport", "ts": TS},
        {"event_id": "e3", "user_id": "U2", "item_id": "N2", "type": "like", "ts": TS},
    ]
    stdin = b"\n".join(orjson.dumps(line) for line in lines) + b"\n"
    done = _xrec(env, "produce", "events", "-", "--strict", stdin=stdin)
    assert done.returncode == 1
    assert "sent 2 records" in done.stdout.decode()
    assert "line 2: unknown_event_type" in done.stderr.decode()
    records = await _read_all(kafka_bootstrap, env["XREC_TOPIC_EVENTS"], 2)
    assert sorted((k, orjson.loads(v or b"{}")["event_id"]) for k, v in records) == [(b"U1", "e1"), (b"U2", "e3")]


async def test_tail_prints_lists_with_titles_and_tombstones_as_forgotten_users(
    env: dict[str, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text(
        orjson.dumps({"item_id": "N1", "title": "ジャズ喫茶の名盤", "lang": "ja", "ts": TS}).decode() + "\n",
        encoding="utf-8",
    )
    assert _xrec(env, "produce", "items", str(items)).returncode == 0
    listing = {
        "user_id": "U1",
        "generated_at": TS + 42,
        "trigger_event_id": "e1",
        "strategy": "multi-interest",
        "variant": "A",
        "items": [
            {"item_id": "N1", "score": 0.83, "lang": "ja", "because": "N0"},
            {"item_id": "N9", "score": 0.5, "lang": "de", "because": None},
        ],
    }
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(env["XREC_TOPIC_RECOMMENDATIONS"], key=b"U1", value=orjson.dumps(listing))
        await producer.send_and_wait(env["XREC_TOPIC_RECOMMENDATIONS"], key=b"U2", value=None)
    finally:
        await producer.stop()

    done = _xrec(env, "tail", "--from-beginning", "--timeout", "5")
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "U1  multi-interest (variant A)" in out
    assert "ジャズ喫茶の名盤  [N1]" in out and "[N9]" in out
    assert "user U2 forgotten" in out

    done = _xrec(env, "tail", "--from-beginning", "--user", "U1", "--max", "1", "--json")
    rows = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0, done.stderr.decode()
    assert len(rows) == 1 and rows[0]["items"][0]["title"] == "ジャズ喫茶の名盤"
    assert rows[0]["items"][1] == listing["items"][1]  # type: ignore[index]


def test_a_client_command_without_a_broker_says_how_to_get_one(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("XREC_")}
    done = _xrec({**clean, "XREC_HOME": str(tmp_path)}, "tail", "--timeout", "1")
    assert done.returncode == 1
    assert "no Kafka broker" in done.stderr.decode() and "xrec broker start" in done.stderr.decode()
