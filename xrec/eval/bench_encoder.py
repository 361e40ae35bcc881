"""``xrec bench encoder``: the batched encoder against one text per forward pass, in one run.

Texts are realistic and of mixed length: news titles, abstracts and both together in English and
Mandarin from ``../shared/data/mind-xmind`` when it is there, else the project's own multilingual
sample sentences (tests/fixtures) joined into texts of one to eight sentences. The naive baseline
encodes a random sample of the same texts one per forward pass (no batching, no padding); both use
the same model, device and dtype, and both are warmed up first.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

from xrec.errors import CommandError

MIND_DIR = Path("..") / "shared" / "data" / "mind-xmind"
SAMPLE_FILE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "multilingual_sample.tsv"


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


def load_texts(n: int, seed: int) -> tuple[list[str], str]:
    """``n`` texts of mixed length and language, and where they came from."""
    rng = random.Random(seed)
    mind = _mind_snippets()
    if mind:
        texts = []
        for _ in range(n):
            title, abstract = rng.choice(mind)
            form = rng.random()
            texts.append(title if form < 0.4 or not abstract else abstract if form < 0.7 else f"{title}. {abstract}")
        return texts, f"{MIND_DIR} news titles/abstracts (en, zh)"
    if not SAMPLE_FILE.is_file():
        raise CommandError(f"no benchmark texts: neither {MIND_DIR} nor the sample {SAMPLE_FILE} is present")
    sentences = [line.split("\t")[2].strip() for line in SAMPLE_FILE.read_text(encoding="utf-8").splitlines()[1:]]
    texts = [" ".join(rng.choice(sentences) for _ in range(rng.choice((1, 1, 1, 2, 3, 5, 8)))) for _ in range(n)]
    return texts, f"{SAMPLE_FILE.name} sentences joined 1-8 at a time"


def _mind_snippets() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, title_col, abstract_col in (("news_en.tsv", 3, 4), ("news_zh.tsv", 1, 2)):
        path = MIND_DIR / name
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as fh:
            next(fh, None)
            for i, line in enumerate(fh):
                if i >= 5000:
                    break
                parts = line.rstrip("\n").split("\t")
                if len(parts) > abstract_col and parts[title_col].strip():
                    out.append((parts[title_col].strip(), parts[abstract_col].strip()))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from xrec.config import Settings
    from xrec.encoder import TextEncoder

    if args.texts < 1 or args.baseline_texts < 1:
        raise CommandError("--texts and --baseline-texts must be at least 1")
    settings = Settings.from_env()
    if args.device:
        settings = settings.replace(device=args.device)
    encoder = TextEncoder(settings=settings)  # raises a one-line CommandError for a missing device
    texts, source = load_texts(args.texts, args.seed)
    baseline = random.Random(args.seed + 1).sample(texts, min(args.baseline_texts, len(texts)))
    lengths = encoder.token_lengths(texts)
    baseline_tokens = sum(encoder.token_lengths(baseline))

    encoder.encode(texts[:64])  # warm-up: first passes allocate and pick kernels
    for text in baseline[:8]:
        encoder.encode([text])

    stats = encoder.stats
    padded_before, passes_before = stats.padded_tokens, stats.batches
    t0 = time.perf_counter()
    encoder.encode(texts)
    _sync(encoder)
    batched_s = time.perf_counter() - t0
    passes, padded = stats.batches - passes_before, stats.padded_tokens - padded_before

    t0 = time.perf_counter()
    for text in baseline:
        encoder.encode([text])
    _sync(encoder)
    naive_s = time.perf_counter() - t0

    tokens = sum(lengths)
    batched = {"texts": len(texts), "tokens": tokens, "seconds": batched_s, "passes": passes}
    batched |= {"sentences_per_s": len(texts) / batched_s, "tokens_per_s": tokens / batched_s}
    batched["padding_overhead"] = padded / tokens - 1.0
    naive = {"texts": len(baseline), "tokens": baseline_tokens, "seconds": naive_s, "passes": len(baseline)}
    naive |= {"sentences_per_s": len(baseline) / naive_s, "tokens_per_s": baseline_tokens / naive_s}
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
        "naive": naive,
        "speedup_sentences": batched["sentences_per_s"] / naive["sentences_per_s"],
        "speedup_tokens": batched["tokens_per_s"] / naive["tokens_per_s"],
    }


def _sync(encoder: Any) -> None:
    import torch

    if encoder.device.type == "cuda":
        torch.cuda.synchronize(encoder.device)


def _threads(encoder: Any) -> int | None:
    import torch

    return torch.get_num_threads() if encoder.device.type == "cpu" else None


def format_table(result: dict[str, Any]) -> str:
    b, n = result["batched"], result["naive"]
    threads = f", {result['cpu_threads']} CPU threads" if result["cpu_threads"] else ""
    return "\n".join(
        [
            f"encoder throughput — {result['model']} on {result['device']} ({result['dtype']}{threads})",
            f"texts: {result['source']}, mean {result['mean_tokens_per_text']:.1f} tokens, max {result['max_tokens']}",
            f"{'mode':<34} {'texts':>6} {'passes':>7} {'sent/s':>9} {'tokens/s':>10}",
            f"{'batched (budget ' + str(result['token_budget']) + ' tokens/pass)':<34} {b['texts']:>6} {b['passes']:>7} "
            f"{b['sentences_per_s']:>9.1f} {b['tokens_per_s']:>10.0f}",
            f"{'naive (one text per pass)':<34} {n['texts']:>6} {n['passes']:>7} "
            f"{n['sentences_per_s']:>9.1f} {n['tokens_per_s']:>10.0f}",
            f"speedup: {result['speedup_sentences']:.2f}x sentences/s, {result['speedup_tokens']:.2f}x tokens/s; "
            f"batched padding overhead {b['padding_overhead'] * 100:.1f}%",
        ]
    )
