"""The evaluation metrics against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xrec.eval import metrics as m


def test_auc_counts_the_share_of_clicked_non_clicked_pairs_ordered_right() -> None:
    # clicked 0.9 beats both non-clicked (0.8, 0.1); clicked 0.3 beats only 0.1: 3 of 4 pairs
    assert m.auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.3, 0.1])) == pytest.approx(0.75)


def test_auc_is_one_for_a_perfect_order_and_zero_for_the_reverse() -> None:
    labels = np.array([1, 1, 0, 0, 0])
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    assert m.auc(labels, scores) == 1.0
    assert m.auc(labels, -scores) == 0.0


def test_auc_counts_a_tie_between_a_click_and_a_non_click_as_half() -> None:
    assert m.auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5
    # clicked 0.7 ties one non-clicked and beats the other: (0.5 + 1) / 2
    assert m.auc(np.array([1, 0, 0]), np.array([0.7, 0.7, 0.2])) == pytest.approx(0.75)


def test_auc_refuses_an_impression_without_both_kinds_of_candidate() -> None:
    with pytest.raises(ValueError):
        m.auc(np.array([1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError):
        m.auc(np.array([0, 0]), np.array([0.1, 0.2]))


def test_mrr_averages_the_reciprocal_ranks_of_all_clicked_candidates() -> None:
    labels = np.array([0, 1, 0, 1])
    ranking = m.order(np.array([0.9, 0.8, 0.1, 0.7]))  # ranks: idx0, idx1 (click), idx3 (click), idx2
    assert list(ranking) == [0, 1, 3, 2]
    assert m.mrr(labels, ranking) == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_ndcg_divides_the_discounted_gain_by_the_ideal_one() -> None:
    labels = np.array([0, 1, 0, 1])
    ranking = np.array([0, 1, 3, 2])  # clicks at ranks 2 and 3
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    ideal = 1 + 1 / math.log2(3)
    assert m.ndcg_at_k(labels, ranking, 5) == pytest.approx(dcg / ideal)
    assert m.ndcg_at_k(labels, ranking, 2) == pytest.approx((1 / math.log2(3)) / ideal)  # rank 3 falls outside
    assert m.ndcg_at_k(labels, np.array([1, 3, 0, 2]), 10) == pytest.approx(1.0)


def test_ties_are_ordered_by_the_tiebreak_key_not_by_position() -> None:
    scores = np.array([0.5, 0.5, 0.5, 0.9])
    assert list(m.order(scores, np.array([2, 0, 1, 3]))) == [3, 1, 2, 0]
    metrics_first = m.impression_metrics(np.array([1, 0, 0, 0]), np.zeros(4), tiebreak=np.array([0, 1, 2, 3]))
    metrics_last = m.impression_metrics(np.array([1, 0, 0, 0]), np.zeros(4), tiebreak=np.array([3, 2, 1, 0]))
    assert metrics_first["mrr"] == 1.0 and metrics_last["mrr"] == 0.25
    assert metrics_first["auc"] == metrics_last["auc"] == 0.5  # AUC counts ties as half, whatever the order


def test_bootstrap_interval_of_a_constant_is_that_constant() -> None:
    idx = m.bootstrap_indices(50, rounds=200, seed=1)
    iv = m.bootstrap_ci(np.full(50, 0.7), idx)
    assert (iv.mean, iv.low, iv.high) == pytest.approx((0.7, 0.7, 0.7))


def test_bootstrap_interval_matches_the_normal_approximation_for_a_large_sample() -> None:
    values = np.random.default_rng(3).normal(0.6, 0.2, size=2000)
    iv = m.bootstrap_ci(values, m.bootstrap_indices(len(values), rounds=2000, seed=4))
    half_width = 1.96 * values.std() / math.sqrt(len(values))
    assert iv.low < iv.mean < iv.high
    assert iv.high - iv.low == pytest.approx(2 * half_width, rel=0.15)


def test_paired_bootstrap_of_a_difference_excludes_zero_when_one_system_always_wins() -> None:
    rng = np.random.default_rng(5)
    base = rng.uniform(0.4, 0.6, size=300)
    better = base + rng.uniform(0.01, 0.03, size=300)
    iv = m.bootstrap_ci(better - base, m.bootstrap_indices(300, seed=6))
    assert iv.low > 0


def test_intra_list_diversity_is_the_mean_pairwise_cosine_distance() -> None:
    assert m.intra_list_diversity(np.eye(3, dtype=np.float32)) == pytest.approx(1.0)
    same = np.tile(np.array([[0.6, 0.8]], np.float32), (4, 1))
    assert m.intra_list_diversity(same) == pytest.approx(0.0, abs=1e-6)
    sixty_degrees = np.array([[1.0, 0.0], [0.5, math.sqrt(3) / 2]], np.float32)
    assert m.intra_list_diversity(sixty_degrees) == pytest.approx(0.5)


def test_catalog_coverage_counts_distinct_items_over_the_catalog() -> None:
    assert m.catalog_coverage([["a", "b"], ["b", "c"]], catalog_size=4) == 0.75


def test_unfamiliar_language_share_counts_items_outside_the_users_languages() -> None:
    assert m.unfamiliar_language_share(["en", "zh", "zh"], {"zh"}) == pytest.approx(1 / 3)
    assert m.unfamiliar_language_share(["zh"], {"zh", "en"}) == 0.0
