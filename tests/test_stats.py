"""Tests for selftrain.evaluation.stats: scipy as the reference, plus values worked by hand."""

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from selftrain.evaluation.stats import (
    GateDecision,
    Interval,
    bootstrap_ci,
    cohens_d_paired,
    cohens_d_pooled,
    gate,
    independent_t_test,
    learning_curve,
    mcnemar_exact,
    mean_difference_ci,
    paired_t_test,
    proportion_ci,
    wilcoxon_signed_rank,
)

# Differences [1, 2, 3] (baseline all 0):
#   mean 2, sd (ddof=1) = sqrt(((-1)^2 + 0 + 1^2) / 2) = 1, se = 1/sqrt(3) = 0.577350
#   t = 2 / (1/sqrt(3)) = 2*sqrt(3) = 3.464102, df = 2
#   For df = 2 the t CDF is 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided
#   p = 1 - t/sqrt(2 + t^2) = 1 - 3.464102/sqrt(14) = 1 - 0.925820 = 0.074180
#   95% CI = 2 +- t_{0.975,2} * se = 2 +- 4.302653 * 0.577350 = 2 +- 2.484138
#          = (-0.484138, 4.484138)
#   Cohen's d_z = 2 / 1 = 2
HAND_BASE = [0.0, 0.0, 0.0]
HAND_CAND = [1.0, 2.0, 3.0]


def _random_pairs(n: int = 30, seed: int = 1) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.7, n)
    cand = np.clip(base + rng.normal(0.05, 0.1, n), 0.0, 1.0)
    return base.tolist(), cand.tolist()


# --- paired t ----------------------------------------------------------------------


def test_paired_t_hand_computed():
    r = paired_t_test(HAND_BASE, HAND_CAND)
    assert r.statistic == pytest.approx(2 * math.sqrt(3))
    assert r.statistic == pytest.approx(3.464102, abs=1e-6)
    assert r.p_value == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14))
    assert r.p_value == pytest.approx(0.074180, abs=1e-6)
    assert r.df == 2
    assert r.test == "paired_t"
    assert r.n == 3
    assert r.note == ""


def test_paired_t_matches_scipy_and_sign_is_candidate_minus_baseline():
    base, cand = _random_pairs()
    r = paired_t_test(base, cand)
    ref = sps.ttest_rel(cand, base)
    assert r.statistic == pytest.approx(ref.statistic)
    assert r.p_value == pytest.approx(ref.pvalue)
    assert r.df == len(base) - 1
    assert paired_t_test(cand, base).statistic == pytest.approx(-ref.statistic)


def test_paired_t_all_equal_gives_p_one():
    r = paired_t_test([0.1, 0.5, 0.9], [0.1, 0.5, 0.9])
    assert (r.statistic, r.p_value) == (0.0, 1.0)
    assert r.note


def test_paired_t_constant_nonzero_shift_is_deterministic_improvement():
    # 0.3 - 0.2 and 0.4 - 0.3 differ only by float rounding; scipy would report t ~ 5e15.
    r = paired_t_test([0.2, 0.3, 0.4], [0.3, 0.4, 0.5])
    assert r.statistic == math.inf
    assert r.p_value == 0.0
    assert "deterministic" in r.note
    worse = paired_t_test([0.3, 0.4, 0.5], [0.2, 0.3, 0.4])
    assert worse.statistic == -math.inf and worse.p_value == 0.0


def test_paired_t_single_pair_has_no_evidence():
    r = paired_t_test([0.5], [0.9])
    assert (r.statistic, r.p_value, r.n) == (0.0, 1.0, 1)
    assert "fewer than 2" in r.note


@pytest.mark.parametrize(
    "base, cand, match",
    [
        ([0.1, 0.2], [0.1], "same items: got 2 and 1"),
        ([], [], "baseline must be a non-empty list"),
        ([0.1, float("nan")], [0.1, 0.2], "finite"),
    ],
)
def test_paired_inputs_rejected_with_a_sentence(base, cand, match):
    for fn in (paired_t_test, wilcoxon_signed_rank, cohens_d_paired, mean_difference_ci, bootstrap_ci):
        with pytest.raises(ValueError, match=match):
            fn(base, cand)


# --- Wilcoxon ----------------------------------------------------------------------


def test_wilcoxon_hand_computed_with_a_zero_difference():
    # d = [1, 2, -3, 4, 5, 0]: the 0 is dropped, |d| ranks 1..5, R+ = 1+2+4+5 = 12,
    # R- = 3, statistic = min = 3. Exact null: each of 2^5 = 32 sign patterns equally
    # likely; subsets of {1..5} with sum <= 3 are {}, {1}, {2}, {3}, {1,2} -> 5,
    # so p = 2 * 5/32 = 0.3125.
    r = wilcoxon_signed_rank([0.0] * 6, [1.0, 2.0, -3.0, 4.0, 5.0, 0.0])
    assert r.statistic == 3.0
    assert r.p_value == pytest.approx(0.3125)
    assert r.n == 5
    assert r.test == "wilcoxon_signed_rank"


def test_wilcoxon_matches_scipy():
    base, cand = _random_pairs(seed=7)
    ref = sps.wilcoxon(cand, base)
    r = wilcoxon_signed_rank(base, cand)
    assert r.statistic == pytest.approx(ref.statistic)
    assert r.p_value == pytest.approx(ref.pvalue)


def test_wilcoxon_all_zero_differences():
    r = wilcoxon_signed_rank([0.2, 0.4], [0.2, 0.4])
    assert (r.statistic, r.p_value, r.n) == (0.0, 1.0, 0)
    assert r.note


# --- McNemar -----------------------------------------------------------------------


def test_mcnemar_hand_computed():
    # b = 1, c = 6: p = 2 * (C(7,0) + C(7,1)) / 2^7 = 2 * 8 / 128 = 0.125.
    # Plus 3 items both pass and 2 both fail, which must not matter.
    base = [True] * 1 + [False] * 6 + [True] * 3 + [False] * 2
    cand = [False] * 1 + [True] * 6 + [True] * 3 + [False] * 2
    r = mcnemar_exact(base, cand)
    assert (r.b, r.c) == (1, 6)
    assert r.p_value == pytest.approx(0.125)
    assert r.p_value == pytest.approx(sps.binomtest(1, 7, 0.5).pvalue)


def test_mcnemar_symmetric_and_no_discordant_pairs():
    assert mcnemar_exact([False] * 6 + [True], [True] * 6 + [False]).p_value == pytest.approx(0.125)
    r = mcnemar_exact([True, False, True], [True, False, True])
    assert (r.b, r.c, r.p_value) == (0, 0, 1.0)


def test_mcnemar_rejects_mismatched_or_empty():
    with pytest.raises(ValueError, match="got 2 and 1 outcomes"):
        mcnemar_exact([True, False], [True])
    with pytest.raises(ValueError, match="non-empty"):
        mcnemar_exact([], [])


# --- Welch -------------------------------------------------------------------------


def test_welch_hand_computed_and_against_scipy():
    # a = [1,2,3]: mean 2, s^2 = 1.  b = [2,5,9]: mean 16/3, s^2 = (100+1+121)/9/2 = 37/3.
    # se^2 = 1/3 + (37/3)/3 = 40/9, t = (10/3) / sqrt(40/9) = sqrt(10)/2 = 1.581139
    # df = (40/9)^2 / ((1/3)^2/2 + (37/9)^2/2) = (1600/81) / (9/162 + 1369/162)
    #    = (1600/81) * (162/1378) = 3200/1378 = 2.322206
    a, b = [1.0, 2.0, 3.0], [2.0, 5.0, 9.0]
    r = independent_t_test(a, b)
    assert r.statistic == pytest.approx(math.sqrt(10) / 2)
    assert r.df == pytest.approx(3200 / 1378)
    ref = sps.ttest_ind(b, a, equal_var=False)
    assert r.statistic == pytest.approx(ref.statistic)
    assert r.p_value == pytest.approx(ref.pvalue)
    assert r.test == "welch_t" and r.n == 6


def test_welch_matches_scipy_on_unequal_sizes():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.4, 0.1, 25).tolist(), rng.normal(0.5, 0.3, 40).tolist()
    r = independent_t_test(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert r.statistic == pytest.approx(-ref.statistic)
    assert r.p_value == pytest.approx(ref.pvalue)


def test_welch_edge_cases():
    assert independent_t_test([0.5], [0.1, 0.9]).p_value == 1.0
    same = independent_t_test([0.5, 0.5], [0.5, 0.5, 0.5])
    assert (same.statistic, same.p_value) == (0.0, 1.0)
    shifted = independent_t_test([0.5, 0.5], [0.7, 0.7])
    assert (shifted.statistic, shifted.p_value) == (math.inf, 0.0)


# --- effect sizes --------------------------------------------------------------------


def test_cohens_d_paired_hand_and_edges():
    assert cohens_d_paired(HAND_BASE, HAND_CAND) == pytest.approx(2.0)
    assert cohens_d_paired([0.1, 0.2], [0.1, 0.2]) == 0.0
    assert cohens_d_paired([0.1, 0.2], [0.3, 0.4]) == math.inf
    assert cohens_d_paired([0.3, 0.4], [0.1, 0.2]) == -math.inf
    assert cohens_d_paired([0.3], [0.9]) == 0.0


def test_cohens_d_pooled_hand_and_numpy():
    # a = [1,2,3], b = [2,5,9]: SS = 2 + 222/9 = 80/3, s_p^2 = (80/3)/4 = 20/3,
    # d = (10/3) / sqrt(20/3); d^2 = (100/9) * (3/20) = 5/3, d = sqrt(5/3) = 1.290994
    a, b = [1.0, 2.0, 3.0], [2.0, 5.0, 9.0]
    assert cohens_d_pooled(a, b) == pytest.approx(math.sqrt(5 / 3))
    assert cohens_d_pooled(b, a) == pytest.approx(-math.sqrt(5 / 3))
    sp = math.sqrt((2 * np.var(a, ddof=1) + 2 * np.var(b, ddof=1)) / 4)
    assert cohens_d_pooled(a, b) == pytest.approx((np.mean(b) - np.mean(a)) / sp)
    assert cohens_d_pooled([0.4, 0.4], [0.4, 0.4]) == 0.0
    assert cohens_d_pooled([0.4, 0.4], [0.6, 0.6]) == math.inf


# --- intervals ---------------------------------------------------------------------


def test_mean_difference_ci_hand_computed():
    ci = mean_difference_ci(HAND_BASE, HAND_CAND)
    assert ci.mean == 2.0
    assert ci.low == pytest.approx(-0.484138, abs=1e-6)
    assert ci.high == pytest.approx(4.484138, abs=1e-6)
    assert ci.confidence == 0.95


def test_mean_difference_ci_matches_scipy_paired_interval():
    base, cand = _random_pairs(n=50, seed=11)
    ci = mean_difference_ci(base, cand, confidence=0.9)
    low, high = sps.ttest_rel(cand, base).confidence_interval(confidence_level=0.9)
    assert (ci.low, ci.high) == (pytest.approx(low), pytest.approx(high))


def test_mean_difference_ci_edges():
    one = mean_difference_ci([0.2], [0.5])
    assert (one.low, one.high) == (-math.inf, math.inf)
    assert one.mean == pytest.approx(0.3)
    flat = mean_difference_ci([0.2, 0.3], [0.4, 0.5])
    assert flat.low == flat.high == pytest.approx(0.2)
    with pytest.raises(ValueError, match="confidence"):
        mean_difference_ci(HAND_BASE, HAND_CAND, confidence=95)


def test_bootstrap_ci_is_reproducible_and_agrees_with_t_interval():
    base, cand = _random_pairs(n=200, seed=5)
    boot = bootstrap_ci(base, cand, seed=42)
    assert boot == bootstrap_ci(base, cand, seed=42)
    assert boot != bootstrap_ci(base, cand, seed=43)
    t_ci = mean_difference_ci(base, cand)
    assert boot.low < t_ci.mean < boot.high
    assert boot.mean == pytest.approx(t_ci.mean)
    # With 200 items the percentile bootstrap and the t interval nearly coincide.
    assert boot.low == pytest.approx(t_ci.low, abs=0.01)
    assert boot.high == pytest.approx(t_ci.high, abs=0.01)


def test_bootstrap_ci_degenerate_and_bad_args():
    ci = bootstrap_ci([0.1], [0.4])
    assert ci.low == ci.high == ci.mean == pytest.approx(0.3)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci([0.1], [0.4], n_resamples=0)


# --- gate --------------------------------------------------------------------------


def _binary(passes: list[int], n: int) -> list[float]:
    return [1.0 if i in passes else 0.0 for i in range(n)]


def test_gate_deploys_a_significantly_better_candidate():
    # 40 items; baseline passes 0..19, candidate passes 0..29: b = 0, c = 10,
    # McNemar p = 2 / 2^10 = 0.001953; improvement (0.75 - 0.5) / 0.5 = 50%.
    base = _binary(list(range(20)), 40)
    cand = _binary(list(range(30)), 40)
    d = gate(base, cand)
    assert d.deploy
    assert d.test == "mcnemar_exact"
    assert d.p_value == pytest.approx(2 / 2**10)
    assert d.improvement == pytest.approx(0.5)
    assert (d.baseline_mean, d.candidate_mean, d.mean_difference) == (0.5, 0.75, 0.25)
    assert d.ci_low < 0.25 < d.ci_high
    assert d.effect_size == pytest.approx(cohens_d_paired(base, cand))
    assert d.n == 40
    assert d.reasons == ("candidate is better by 50.0% (p = 0.00195)",)


def test_gate_rejects_for_margin_even_when_significant():
    base = np.linspace(0.3, 0.7, 50)
    cand = base + 0.01 + 0.001 * np.resize([1.0, -1.0], 50)  # +2% of a 0.5 mean
    d = gate(base.tolist(), cand.tolist())
    assert d.test == "paired_t"
    assert d.p_value < 1e-6
    assert d.p_value == pytest.approx(sps.ttest_rel(cand, base).pvalue)
    assert d.improvement == pytest.approx(0.02)
    assert not d.deploy
    assert d.reasons == ("improvement 2.0% is below the required 5.0%",)


def test_gate_rejects_for_significance_despite_large_margin():
    # 20 items; baseline passes 0..9; candidate loses 0,1,2 and gains 10..15:
    # b = 3, c = 6, p = 2 * (C(9,0)+C(9,1)+C(9,2)+C(9,3)) / 2^9 = 2 * 130 / 512 = 0.5078
    base = _binary(list(range(10)), 20)
    cand = _binary(list(range(3, 16)), 20)
    d = gate(base, cand)
    assert d.p_value == pytest.approx(260 / 512)
    assert d.improvement == pytest.approx(0.3)
    assert not d.deploy
    assert d.reasons == ("p = 0.508 is not below alpha 0.05",)


def test_gate_never_deploys_a_significantly_worse_candidate():
    base = _binary(list(range(30)), 40)
    cand = _binary(list(range(20)), 40)
    d = gate(base, cand, min_improvement=-1.0)  # even with no margin required
    assert d.p_value < 0.05
    assert not d.deploy
    assert d.reasons == ("candidate is worse than baseline by 33.3% (p = 0.00195)",)


def test_gate_zero_baseline_uses_absolute_difference():
    base = [0.0] * 40
    d = gate(base, _binary(list(range(10)), 40))
    assert d.improvement == pytest.approx(0.25)
    assert d.deploy
    assert "absolute" in d.reasons[0]
    small = gate(base, _binary([0], 40))
    assert small.improvement == pytest.approx(0.025)
    assert not small.deploy
    assert small.reasons[0].startswith("improvement 0.025 (absolute")


def test_gate_uses_mcnemar_when_pass_lists_given_with_continuous_scores():
    base = [0.2, 0.4, 0.3, 0.5, 0.1, 0.6, 0.3, 0.2]
    cand = [0.9, 0.8, 0.9, 0.7, 0.6, 0.9, 0.8, 0.7]
    d = gate(base, cand, baseline_pass=[False] * 8, candidate_pass=[True] * 8)
    assert d.test == "mcnemar_exact"
    assert d.p_value == pytest.approx(2 / 2**8)
    assert d.deploy


def test_gate_mcnemar_direction_must_agree_with_means():
    base = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    cand = [0.9] * 8
    d = gate(base, cand, baseline_pass=[True] * 8, candidate_pass=[False] * 8)
    assert not d.deploy
    assert "fails more items" in d.reasons[-1]


def test_gate_equal_models_do_not_deploy():
    scores = [0.2, 0.5, 0.8]
    d = gate(scores, scores)
    assert not d.deploy
    assert d.p_value == 1.0
    assert "same mean" in d.reasons[-1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"baseline": [0.1, 0.2], "candidate": [0.3]}, "same items: got 2 and 1"),
        ({"baseline": [], "candidate": []}, "non-empty"),
        ({"baseline": [0.1, 1.5], "candidate": [0.1, 0.2]}, "between 0 and 1"),
        ({"baseline": [0.1], "candidate": [0.2], "baseline_pass": [True]}, "together"),
        (
            {"baseline": [0.1], "candidate": [0.2], "baseline_pass": [True, False], "candidate_pass": [True]},
            "one outcome per scored item",
        ),
        ({"baseline": [0.1], "candidate": [0.2], "alpha": 5}, "alpha"),
    ],
)
def test_gate_rejects_bad_input_with_one_sentence(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gate(**kwargs)


def test_results_are_json_serialisable():
    base, cand = _random_pairs()
    for result in (
        paired_t_test(base, cand),
        wilcoxon_signed_rank(base, cand),
        mcnemar_exact([True, False], [True, True]),
        mean_difference_ci(base, cand),
        gate(base, cand),
    ):
        payload = dataclasses.asdict(result)
        json.loads(json.dumps(payload))
        assert all(type(v) in (float, int, bool, str, tuple) for v in payload.values())
    assert isinstance(gate(base, cand), GateDecision)
    assert isinstance(bootstrap_ci(base, cand, n_resamples=100), Interval)


# --- learning curve ----------------------------------------------------------------


def test_learning_curve_hand_computed():
    history = [
        {"train_loss": 1.0, "eval_loss": 1.1, "performance": 0.2},
        {"train_loss": 0.8, "eval_loss": 0.9, "performance": 0.3},
        {"train_loss": 0.6, "eval_loss": 0.8, "performance": None},
        {"train_loss": 0.4, "eval_loss": 0.9, "performance": 0.5},
    ]
    out = learning_curve(history)
    # train loss falls 0.2 per session.
    assert out["loss_slope"] == pytest.approx(-0.2)
    # last 3 eval (0.9, 0.8, 0.9) mean 0.8667 - last 3 train (0.8, 0.6, 0.4) mean 0.6
    assert out["overfitting_indicator"] == pytest.approx(0.8 / 3)
    # performance at sessions 0, 1, 3: x mean 4/3, y mean 1/3,
    # Sxy = (-4/3)(-2/15) + (-1/3)(-1/30) + (5/3)(1/6) = 0.4667, Sxx = 42/9, slope 0.1
    assert out["performance_trend"] == pytest.approx(0.1)
    assert out["total_sessions"] == 4
    assert out["current_train_loss"] == 0.4
    assert out["current_eval_loss"] == 0.9
    assert out["best_performance"] == 0.5
    json.dumps(out)


def test_learning_curve_sparse_history():
    assert learning_curve([]) == {
        "total_sessions": 0,
        "loss_slope": 0.0,
        "overfitting_indicator": 0.0,
        "performance_trend": 0.0,
        "current_train_loss": None,
        "current_eval_loss": None,
        "best_performance": None,
    }
    one = learning_curve([{"train_loss": 0.5, "eval_loss": 0.7, "performance": None}])
    assert one["loss_slope"] == 0.0
    assert one["overfitting_indicator"] == pytest.approx(0.2)
    assert one["best_performance"] is None
    no_eval = learning_curve([{"train_loss": 0.5}, {"train_loss": 0.3}])
    assert no_eval["overfitting_indicator"] == 0.0
    assert no_eval["loss_slope"] == pytest.approx(-0.2)


# --- proportion (Wilson) interval -------------------------------------------------------


def test_proportion_ci_hand_computed():
    # 5 of 10, 95%: z = 1.959964, z^2/n = 0.384146, so center = (0.5 + 0.192073) / 1.384146 = 0.5
    # and half = 1.959964 / 1.384146 * sqrt(0.025 + 3.841459 / 400) = 1.416009 * 0.186020 = 0.263405
    ci = proportion_ci(5, 10)
    assert (ci.low, ci.high, ci.mean, ci.confidence) == (
        pytest.approx(0.236593, abs=1e-6), pytest.approx(0.763407, abs=1e-6), 0.5, 0.95)


def test_proportion_ci_matches_scipy_and_stays_in_range():
    for k, n in [(0, 40), (11, 164), (40, 40), (1, 3)]:
        ci = proportion_ci(k, n)
        ref = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert (ci.low, ci.high) == (pytest.approx(ref.low), pytest.approx(ref.high))
        assert 0.0 <= ci.low <= ci.mean <= ci.high <= 1.0
    assert proportion_ci(0, 0) == Interval(0.0, 1.0, 0.0, 0.95)
    with pytest.raises(ValueError):
        proportion_ci(5, 4)
