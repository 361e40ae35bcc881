"""Ranking metrics of one impression, bootstrap intervals, and beyond-accuracy measures of lists.

Definitions follow the MIND benchmark's evaluation script, so figures compare with published ones:
AUC is the probability that a clicked candidate outscores a non-clicked one (ties count one half);
MRR is the mean over *clicked* candidates of 1/rank; nDCG@k uses gains 2^rel − 1 and discount
log2(rank + 1). Ranks need an order, and an order needs a rule for tied scores: ``order`` breaks
ties by a caller-given key (a seeded shuffle), never by input position, which would favour whatever
the file lists first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def order(scores: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Indices from best to worst score; equal scores ordered by ``tiebreak`` (ascending)."""
    scores = np.asarray(scores, np.float64)
    if tiebreak is None:
        return np.argsort(-scores, kind="stable")
    return np.lexsort((np.asarray(tiebreak), -scores))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann–Whitney AUC with average ranks for ties; needs at least one positive and one negative."""
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, np.float64)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        raise ValueError("AUC needs at least one clicked and one non-clicked candidate")
    ranks = _average_ranks(scores)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks (ascending), tied values sharing the mean of their ranks."""
    idx = np.argsort(values, kind="stable")
    sorted_vals = values[idx]
    ranks = np.empty(len(values), np.float64)
    start = 0
    n = len(values)
    while start < n:
        stop = start + 1
        while stop < n and sorted_vals[stop] == sorted_vals[start]:
            stop += 1
        ranks[idx[start:stop]] = (start + 1 + stop) / 2.0  # mean of ranks start+1 .. stop
        start = stop
    return ranks


def mrr(labels: np.ndarray, ranking: np.ndarray) -> float:
    """MIND's MRR: mean of 1/rank over the clicked candidates (``ranking`` = indices best first)."""
    rel = np.asarray(labels, np.float64)[ranking]
    if rel.sum() == 0:
        raise ValueError("MRR needs at least one clicked candidate")
    return float((rel / np.arange(1, len(rel) + 1)).sum() / rel.sum())


def dcg_at_k(rel_in_order: np.ndarray, k: int) -> float:
    rel = np.asarray(rel_in_order, np.float64)[:k]
    return float(((2.0**rel - 1.0) / np.log2(np.arange(2, len(rel) + 2))).sum())


def ndcg_at_k(labels: np.ndarray, ranking: np.ndarray, k: int) -> float:
    """DCG@k of the ranking over the DCG@k of the ideal ranking (clicked first)."""
    labels = np.asarray(labels, np.float64)
    ideal = dcg_at_k(np.sort(labels)[::-1], k)
    if ideal == 0:
        raise ValueError("nDCG needs at least one clicked candidate")
    return dcg_at_k(labels[ranking], k) / ideal


METRICS = ("auc", "mrr", "ndcg@5", "ndcg@10")


def impression_metrics(labels: np.ndarray, scores: np.ndarray, tiebreak: np.ndarray | None = None) -> dict[str, float]:
    """All four MIND metrics of one impression's scores."""
    ranking = order(scores, tiebreak)
    return {
        "auc": auc(labels, scores),
        "mrr": mrr(labels, ranking),
        "ndcg@5": ndcg_at_k(labels, ranking, 5),
        "ndcg@10": ndcg_at_k(labels, ranking, 10),
    }


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap percentile interval."""

    mean: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high}


def bootstrap_indices(n: int, rounds: int = 1000, seed: int = 0) -> np.ndarray:
    """(rounds, n) resamples of n impressions with replacement; share them to pair systems."""
    if n <= 0:
        raise ValueError("bootstrap needs at least one value")
    return np.random.default_rng(seed).integers(0, n, size=(rounds, n))


def bootstrap_ci(values: Sequence[float] | np.ndarray, indices: np.ndarray, level: float = 0.95) -> Interval:
    """Mean of ``values`` with the percentile interval of the means of the resamples in ``indices``.

    For a difference between two systems pass the per-impression differences (paired bootstrap).
    """
    v = np.asarray(values, np.float64)
    means = v[indices].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return Interval(float(v.mean()), float(low), float(high))


def intra_list_diversity(vectors: np.ndarray) -> float:
    """Mean pairwise cosine distance (1 − cos) within one list of L2-normalized vectors."""
    n = len(vectors)
    if n < 2:
        raise ValueError("diversity needs a list of at least two items")
    sims = vectors @ vectors.T
    off_diagonal = sims[~np.eye(n, dtype=bool)]
    return float(1.0 - off_diagonal.mean())


def catalog_coverage(lists: Sequence[Sequence[str]], catalog_size: int) -> float:
    """Share of the catalog that appears in at least one list."""
    if catalog_size <= 0:
        raise ValueError("coverage needs a non-empty catalog")
    return len({item for items in lists for item in items}) / catalog_size


def unfamiliar_language_share(item_langs: Sequence[str], user_langs: set[str]) -> float:
    """Share of a list's items in a language the user has never clicked."""
    if not item_langs:
        raise ValueError("an empty list has no language share")
    return sum(lang not in user_langs for lang in item_langs) / len(item_langs)
