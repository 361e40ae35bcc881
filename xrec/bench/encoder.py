"""``xrec bench encoder``: the batched encoder against two naive baselines, in one run.

Texts are realistic and of mixed length: news titles, abstracts and both together in English and
Mandarin from the MIND data (``--data-dir``, default ``XREC_DATA_DIR``/mind-xmind) when it is there, else
the project's own multilingual sample sentences (``xrec/data``) joined into texts of one to eight sentences. The baselines encode a
random sample of the same texts: one per forward pass (no batching, no padding), and fixed batches
padded to the model's maximum length (the common ``padding="max_length"`` loop). All use the same
model, device and dtype, all are warmed up first, and the padded baseline's vectors are compared
with the encoder's so a fast-but-wrong baseline would show.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from xrec.bench.texts import SAMPLE_NAME, mind_news, sample_sentences
from xrec.errors import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "mps"),
        default=None,
        help="device to measure on (default: XREC_DEVICE, itself auto by default)",
    )
    parser.add_argument("--texts", type=int, default=1000, help="texts encoded by the batched encoder (default 1000)")
    parser.add_argument(
        "--baseline-texts",
        type=int,
        default=200,
        help="texts (a random sample of the same ones) encoded one per forward pass (default 200)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for picking and sampling texts")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="MIND/xMIND folder for the texts (default: XREC_DATA_DIR/mind-xmind)",
    )


def load_texts(n: int, seed: int, mind_dir: Path) -> tuple[list[str], str]:
    """``n`` texts of mixed length and language, and where they came from."""
    rng = random.Random(seed)
    mind = mind_news(mind_dir, per_file=5000)
    if mind:
        texts = []
        for _ in range(n):
            title, abstract = rng.choice(mind)
            form = rng.random()
            texts.append(title if form < 0.4 or not abstract else abstract if form < 0.7 else f"{title}. {abstract}")
        return texts, f"{mind_dir} news titles/abstracts (en, zh)"
    sentences = sample_sentences()
    texts = [" ".join(rng.choice(sentences) for _ in range(rng.choice((1, 1, 1, 2, 3, 5, 8)))) for _ in range(n)]
    return texts, f"{SAMPLE_NAME} sentences joined 1-8 at a time (no MIND texts in {mind_dir})"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from xrec.config import Settings
    from xrec.encoder import TextEncoder

    if args.texts < 1 or args.baseline_texts < 1:
        raise CommandError("--texts and --baseline-texts must be at least 1")
    settings = Settings.from_env()
    if args.device:
        settings = settings.replace(device=args.device)
    encoder = TextEncoder(settings=settings)  # raises a one-line error for a missing device
    texts, source = load_texts(args.texts, args.seed, args.data_dir or settings.shared_data("mind-xmind"))
    baseline = random.Random(args.seed + 1).sample(texts, min(args.baseline_texts, len(texts)))
    tokens = sum(encoder.token_lengths(texts))
    baseline_tokens = sum(encoder.token_lengths(baseline))

    encoder.encode(texts[:64])  # warm-up: first passes allocate and pick kernels
    for text in baseline[:8]:
        encoder.encode([text])
    encode_padded_to_max(encoder, baseline[:PADDED_BATCH])

    stats = encoder.stats
    padded_before, passes_before = stats.padded_tokens, stats.batches
    t0 = time.perf_counter()
    encoder.encode(texts)
    _sync(encoder)
    batched_s = time.perf_counter() - t0
    passes, padded = stats.batches - passes_before, stats.padded_tokens - padded_before

    t0 = time.perf_counter()
    one_by_one = np.stack([encoder.encode([text])[0] for text in baseline])
    _sync(encoder)
    one_per_pass_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    padded_vectors = encode_padded_to_max(encoder, baseline)
    _sync(encoder)
    padded_s = time.perf_counter() - t0

    batched = _figures(len(texts), tokens, batched_s, passes)
    batched["padding_overhead"] = padded / tokens - 1.0
    baselines = {
        "one_per_pass": _figures(len(baseline), baseline_tokens, one_per_pass_s, len(baseline)),
        "padded_to_max": _figures(len(baseline), baseline_tokens, padded_s, -(-len(baseline) // PADDED_BATCH)),
    }
    # The baselines must compute what the encoder computes, or their speed says nothing.
    baselines["padded_to_max"]["min_cosine_to_encoder"] = float((padded_vectors * one_by_one).sum(axis=1).min())
    for figures in baselines.values():
        figures["speedup_sentences"] = batched["sentences_per_s"] / figures["sentences_per_s"]
        figures["speedup_tokens"] = batched["tokens_per_s"] / figures["tokens_per_s"]
    return {
        "model": encoder.model_name,
        "device": str(encoder.device),
        "dtype": str(encoder.dtype).removeprefix("torch."),
        "cpu_threads": _threads(encoder),
        "token_budget": encoder.token_budget,
        "max_tokens": encoder.max_tokens,
        "source": source,
        "mean_tokens_per_text": tokens / len(texts),
        "batched": batched,
        "baselines": baselines,
    }


#: Texts per pass of the fixed-padding baseline, a common choice in hand-written encode loops.
PADDED_BATCH = 32


def encode_padded_to_max(encoder: Any, texts: list[str]) -> np.ndarray:
    """The recipe many hand-written loops use: fixed batches in arrival order, each text padded to the
    model's maximum length (``padding="max_length"``), mean pooling, L2 normalization."""
    import torch

    from xrec.encoder import mean_pooled

    prefix = encoder.prefixes.for_kind("passage")
    out = []
    for start in range(0, len(texts), PADDED_BATCH):
        chunk = [prefix + t for t in texts[start : start + PADDED_BATCH]]
        enc = encoder.tokenizer(
            chunk, padding="max_length", truncation=True, max_length=encoder.max_tokens, return_tensors="pt"
        )
        with torch.inference_mode():
            ids, mask = enc["input_ids"].to(encoder.device), enc["attention_mask"].to(encoder.device)
            hidden = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
            out.append(mean_pooled(hidden, mask).cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


def _figures(texts: int, tokens: int, seconds: float, passes: int) -> dict[str, Any]:
    return {
        "texts": texts,
        "tokens": tokens,
        "seconds": seconds,
        "passes": passes,
        "sentences_per_s": texts / seconds,
        "tokens_per_s": tokens / seconds,
    }


def _sync(encoder: Any) -> None:
    import torch

    if encoder.device.type == "cuda":
        torch.cuda.synchronize(encoder.device)


def _threads(encoder: Any) -> int | None:
    import torch

    return torch.get_num_threads() if encoder.device.type == "cpu" else None


def format_table(result: dict[str, Any]) -> str:
    b = result["batched"]
    threads = f", {result['cpu_threads']} CPU threads" if result["cpu_threads"] else ""
    rows = [
        (f"batched (budget {result['token_budget']} tokens/pass)", b),
        ("naive: one text per pass", result["baselines"]["one_per_pass"]),
        (f"naive: {PADDED_BATCH} per pass, padded to {result['max_tokens']}", result["baselines"]["padded_to_max"]),
    ]
    lines = [
        f"encoder throughput — {result['model']} on {result['device']} ({result['dtype']}{threads})",
        f"texts: {result['source']}, mean {result['mean_tokens_per_text']:.1f} tokens, max {result['max_tokens']}",
        f"{'mode':<40} {'texts':>6} {'passes':>7} {'sent/s':>9} {'tokens/s':>10} {'batched is':>11}",
    ]
    for name, r in rows:
        ratio = f"{r['speedup_sentences']:.2f}x" if "speedup_sentences" in r else ""
        lines.append(
            f"{name:<40} {r['texts']:>6} {r['passes']:>7} {r['sentences_per_s']:>9.1f} {r['tokens_per_s']:>10.0f} {ratio:>11}"
        )
    lines.append(
        f"batched padding overhead {b['padding_overhead'] * 100:.1f}%; padded baseline agrees with the encoder "
        f"at cosine >= {result['baselines']['padded_to_max']['min_cosine_to_encoder']:.4f}"
    )
    return "\n".join(lines)
