"""Security limits without a broker: remote code is never run, text and batch limits bound the encoder,
secrets pass through to the Kafka clients but never into a repr, a log line or the metrics page.

Models are tiny random BERTs built in temp dirs (``tests/unit/test_encoder.py``), so nothing is
downloaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch

from streams.app import faust_broker_kwargs
from tests.unit.test_encoder import WORDS, build_tiny_bert
from xrec.config import Settings
from xrec.encoder import TextEncoder
from xrec.events import Interaction, Limits, RecordError, parse_event, parse_item
from xrec.kafka import KafkaConnection
from xrec.metrics import XrecMetrics

pytestmark = pytest.mark.unit

MARKER = "s3cr3t-marker-7f1c"


# --- remote code -------------------------------------------------------------------------------


def model_asking_for_remote_code(root: Path) -> tuple[Path, Path]:
    """A model dir whose config maps AutoConfig/AutoModel to a module that writes a file when imported."""
    path = build_tiny_bert(root / "asks-for-remote-code")
    ran = root / "remote-code-ran"
    (path / "evil_code.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(ran)!r}).write_text('remote code ran')\n"
        "from transformers import BertConfig, BertModel\n"
        "class EvilConfig(BertConfig):\n"
        "    model_type = 'bert'\n"
        "class EvilModel(BertModel):\n"
        "    config_class = EvilConfig\n"
    )
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil_code.EvilConfig", "AutoModel": "evil_code.EvilModel"}
    (path / "config.json").write_text(json.dumps(config))
    return path, ran


@pytest.mark.parametrize("backend", ["torch", "openvino"])  # OpenVINO's export loads the checkpoint too
def test_a_model_directory_that_asks_for_remote_code_loads_without_running_it(tmp_path: Path, backend: str) -> None:
    path, ran = model_asking_for_remote_code(tmp_path)
    settings = Settings.from_env({}, device="cpu", encoder_backend=backend, home=str(tmp_path / "home"))
    encoder = TextEncoder(path, settings=settings)
    assert not ran.exists(), "the model directory's Python code was executed"
    if backend == "torch":
        assert type(encoder.model).__module__.startswith("transformers.")  # the library's own BertModel
    assert encoder.encode(["w1 w2"]).shape == (1, 32)


def test_the_remote_code_probe_does_run_when_trusted_so_the_test_above_can_fail(tmp_path: Path) -> None:
    from transformers import AutoModel

    path, ran = model_asking_for_remote_code(tmp_path)
    AutoModel.from_pretrained(path, trust_remote_code=True)
    assert ran.exists()


# --- text and batch limits ---------------------------------------------------------------------


def test_texts_over_max_text_chars_are_refused_before_any_encoding() -> None:
    limits = Limits(max_text_chars=1000)
    review = {"event_id": "e", "user_id": "u", "item_id": "i", "type": "review", "ts": 1_731_412_486_000}
    accepted = parse_event(orjson.dumps({**review, "text": "x" * 1000}), limits)
    assert isinstance(accepted, Interaction) and accepted.text == "x" * 1000
    for raw in (
        orjson.dumps({**review, "text": "x" * 1001}),
        orjson.dumps({"item_id": "i", "title": "t" * 1001}),
        orjson.dumps({"item_id": "i", "title": "t", "body": "b" * 1001}),
    ):
        with pytest.raises(RecordError) as caught:
            (parse_event if b"event_id" in raw else parse_item)(raw, limits)
        assert caught.value.reason == "text_too_long"


def test_records_over_max_record_bytes_are_refused_before_they_are_parsed() -> None:
    limits = Limits(max_record_bytes=10_000)
    with pytest.raises(RecordError) as caught:
        parse_item(b'{"item_id": "i", "title": "' + b"[" * 20_000 + b'"}', limits)
    assert caught.value.reason == "too_large"


class PassShapes:
    """Forward pre-hook recording each pass's (rows, width): what bounds the encoder's activations."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.shapes: list[tuple[int, int]] = []
        assert encoder.model is not None
        self.handle = encoder.model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.shapes.append(tuple(kwargs["input_ids"].shape))


def longest_allowed_text(max_chars: int) -> str:
    words = (WORDS[i % 200] for i in range(max_chars))
    text = ""
    for w in words:
        if len(text) + len(w) + 1 > max_chars:
            return text
        text = f"{text} {w}" if text else w
    return text


@pytest.mark.parametrize(("max_tokens", "token_budget"), [(32, 128), (64, 16)])
def test_a_batch_of_longest_allowed_texts_stays_within_max_tokens_and_the_token_budget(
    tiny_model_dir: Path, max_tokens: int, token_budget: int
) -> None:
    # PyTorch: the hook sees the very tensors the model gets; the pass planning is the same on every backend.
    settings = Settings.from_env(
        {}, device="cpu", encoder_backend="torch", max_tokens=max_tokens, token_budget=token_budget
    )
    encoder = TextEncoder(tiny_model_dir, settings=settings)
    text = longest_allowed_text(settings.max_text_chars)
    assert len(text) <= settings.max_text_chars and len(text.split()) > 3000
    shapes = PassShapes(encoder)
    out = encoder.encode([text] * 40 + ["w1"] * 40)
    shapes.handle.remove()
    assert out.shape == (80, 32)
    assert max(width for _, width in shapes.shapes) <= max_tokens
    # A pass holds at most token_budget padded tokens, except a single text longer than the budget.
    assert all(rows * width <= token_budget or rows == 1 for rows, width in shapes.shapes)
    assert sum(rows for rows, _ in shapes.shapes) == 80


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


# --- secrets -----------------------------------------------------------------------------------


def secret_settings() -> Settings:
    return Settings.from_env(
        {},
        kafka_bootstrap="127.0.0.1:9",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="xrec",
        kafka_sasl_password=MARKER,
        qdrant_api_key=MARKER + "-qdrant",
        kafka_ssl_key_password=MARKER + "-key",
    )


def test_secrets_pass_through_to_the_kafka_clients() -> None:
    settings = secret_settings()
    connection = KafkaConnection.from_settings(settings)
    assert connection.aiokafka_kwargs()["sasl_plain_password"] == MARKER
    credentials = faust_broker_kwargs(settings)["broker_credentials"]
    assert credentials.password == MARKER


def test_secrets_never_appear_in_reprs_descriptions_log_lines_or_metrics(caplog: pytest.LogCaptureFixture) -> None:
    settings = secret_settings()
    connection = KafkaConnection.from_settings(settings)
    shown = [repr(settings), str(settings), str(settings.redacted()), repr(connection), connection.describe()]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("xrec.test").info("worker settings: %s", settings.redacted())
        logging.getLogger("xrec.test").info("connection: %r", connection)
    body, _ = XrecMetrics.for_settings(settings).render(None)
    for text in [*shown, caplog.text, body.decode()]:
        assert MARKER not in text
    assert "***" in str(settings.redacted())
