"""``xrec bench encoder``: the encoder's backends side by side, and batching against two naive baselines.

Texts are realistic and of mixed length: news titles, abstracts and both together in English and
Mandarin from the MIND data (``--data-dir``, default ``XREC_DATA_DIR``/mind-xmind) when it is there, else
the project's own multilingual sample sentences (``xrec/data``) joined into texts of one to eight sentences. The baselines encode a
random sample of the same texts: one per forward pass (no batching, no padding), and fixed batches
padded to the model's maximum length (the common ``padding="max_length"`` loop). All use the same
model, device and dtype, all are warmed up first, and the padded baseline's vectors are compared
with the encoder's so a fast-but-wrong baseline would show.

Backends: each backend asked for (default: OpenVINO and PyTorch on a CPU, PyTorch alone on a GPU)
encodes the same texts with its own default token budget; the table gives texts/s, the ratio to
PyTorch float32 and the cosine of its vectors to PyTorch's (see :func:`compare_backends` for the
warm-up and the alternating rounds). The baselines run on PyTorch.
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
    parser.add_argument(
        "--backends",
        default=None,
        help="comma-separated backends to compare, from torch and openvino (default: both on CPU, torch on a GPU)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed rounds per backend, alternating; medians reported (default 3)"
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

    if args.texts < 1 or args.baseline_texts < 1:
        raise CommandError("--texts and --baseline-texts must be at least 1")
    settings = Settings.from_env()
    if args.device:
        settings = settings.replace(device=args.device)
    if args.repeats < 1:
        raise CommandError("--repeats must be at least 1")
    backends = _backends(args.backends, settings)
    mind_dir = args.data_dir or settings.shared_data("mind-xmind")
    texts, source = load_texts(args.texts, args.seed, mind_dir)
    warm_texts, _ = load_texts(args.texts, args.seed + 2, mind_dir)
    compared, encoder = compare_backends(settings, backends, texts, warm_texts, args.repeats)
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
        "dtype": encoder.precision,
        "cpu_threads": _threads(encoder),
        "token_budget": encoder.token_budget,
        "max_tokens": encoder.max_tokens,
        "source": source,
        "mean_tokens_per_text": tokens / len(texts),
        "batched": batched,
        "baselines": baselines,
        "backends": compared,
        "repeats": args.repeats,
    }


def _backends(spec: str | None, settings: Any) -> list[str]:
    """The backends to compare, optimized ones first; an unknown or unusable one is a one-line error."""
    from xrec.encoder import choose_backend, choose_device

    if spec is None:
        device = choose_device(settings.device)
        chosen = choose_backend("auto", device)
        return [chosen, "torch"] if chosen != "torch" else ["torch"]
    names = [b.strip() for b in spec.split(",") if b.strip()]
    unknown = sorted(set(names) - {"torch", "openvino"})
    if unknown or not names:
        raise CommandError(f"--backends takes torch and/or openvino, not {', '.join(unknown) or 'nothing'}")
    return sorted(set(names), key=lambda b: b == "torch")  # torch last


def compare_backends(
    settings: Any, backends: list[str], texts: list[str], warm_texts: list[str], repeats: int
) -> tuple[dict[str, dict[str, Any]], Any]:
    """Each backend's texts/s on ``texts`` (median of ``repeats`` rounds) and its vectors' cosine to PyTorch's.

    Every encoder first encodes ``warm_texts`` (other texts of the same kind): OpenVINO prepares kernels
    per input shape on first sight, which a running worker has long done. Rounds alternate the backends,
    optimized ones first, so a slow moment of the shared machine hits both. Returns the figures and the
    PyTorch encoder (the baselines reuse it).
    """
    from xrec.encoder import TextEncoder

    order = [b for b in backends if b != "torch"] + ["torch"]
    encoders = {b: TextEncoder(settings=settings.replace(encoder_backend=b)) for b in order}
    for encoder in encoders.values():
        encoder.encode(warm_texts)
    seconds: dict[str, list[float]] = {b: [] for b in order}
    vectors: dict[str, np.ndarray] = {}
    passes: dict[str, int] = {}
    for _ in range(repeats):
        for b, encoder in encoders.items():
            before = encoder.stats.batches
            t0 = time.perf_counter()
            vectors[b] = encoder.encode(texts)
            _sync(encoder)
            seconds[b].append(time.perf_counter() - t0)
            passes[b] = encoder.stats.batches - before
    reference = vectors["torch"]
    tokens = sum(encoders["torch"].token_lengths(texts))
    out: dict[str, dict[str, Any]] = {}
    for b, encoder in encoders.items():
        median = float(np.median(seconds[b]))
        cosine = (vectors[b] * reference).sum(axis=1)
        ratios = [t / s for t, s in zip(seconds["torch"], seconds[b], strict=True)]  # per round, same moment
        out[b] = {
            "precision": encoder.precision,
            "token_budget": encoder.token_budget,
            "cpu_threads": _threads(encoder),
            **_figures(len(texts), tokens, median, passes[b]),
            "runs_sentences_per_s": [len(texts) / t for t in seconds[b]],
            "speedup_vs_torch": float(np.median(seconds["torch"])) / median,
            "speedup_per_round": ratios,
            "mean_cosine_to_torch": float(cosine.mean()),
            "min_cosine_to_torch": float(cosine.min()),
        }
    for b in order[:-1]:
        encoders[b].close()
    return out, encoders["torch"]


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
    return int(encoder.threads) or None


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
    lines.append("")
    lines.append(
        f"backends, same texts, each at its default token budget, median of {result['repeats']} alternating rounds "
        "after a warm-up on other texts:"
    )
    lines.append(
        f"{'backend':<22} {'budget':>7} {'sent/s':>9} {'tokens/s':>10} {'vs torch':>9} {'per round':>17} "
        f"{'cos mean':>9} {'cos min':>8}"
    )
    for name, r in result["backends"].items():
        label = f"{name} ({r['precision']})"
        rounds = f"{min(r['speedup_per_round']):.2f}-{max(r['speedup_per_round']):.2f}x"
        lines.append(
            f"{label:<22} {r['token_budget']:>7} {r['sentences_per_s']:>9.1f} {r['tokens_per_s']:>10.0f} "
            f"{r['speedup_vs_torch']:>8.2f}x {rounds:>17} {r['mean_cosine_to_torch']:>9.5f} {r['min_cosine_to_torch']:>8.5f}"
        )
    return "\n".join(lines)
