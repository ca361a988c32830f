"""Statistics for deciding whether a fine-tuned candidate beats the model in service.

Every function is pure: sequences in, a small frozen dataclass (or float) out, no I/O.
Results hold plain ``float``/``int``/``bool``/``str`` fields so
``dataclasses.asdict`` gives something ``json.dumps`` accepts. Paired functions take
``(baseline, candidate)`` scored on the same items in the same order and report
``candidate - baseline``, so a positive number always means the candidate is better.

One correction to the design notes this module was specified from: their "paired"
confidence interval used the unpaired standard error and ``n1 + n2 - 2`` degrees of
freedom. For paired scores the data are the per-item differences ``d_i``, so the
interval is ``mean(d) +- t_{1-a/2, n-1} * sd(d) / sqrt(n)`` (see
:func:`mean_difference_ci`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

# Differences whose spread is below this are treated as exactly equal. Scores are
# floats in [0, 1]; 0.3 - 0.2 and 0.4 - 0.3 differ in the 17th digit, and without a
# tolerance that rounding noise becomes a t statistic of 5e15.
_ZERO_TOL = 1e-12


@dataclass(frozen=True)
class TestResult:
    """Outcome of a two-sided test of "no difference"."""

    __test__ = False  # not a pytest test class, despite the name

    statistic: float
    """t for the t-tests, the smaller signed-rank sum for Wilcoxon; +-inf when every
    difference is the same non-zero value."""
    p_value: float
    """Two-sided p-value."""
    df: float
    """Degrees of freedom of the reference t distribution (Welch's is fractional);
    0.0 for the Wilcoxon test, which has none."""
    test: str
    """"paired_t", "wilcoxon_signed_rank" or "welch_t"."""
    n: int
    """Pairs (or total observations for Welch) that entered the test."""
    note: str = ""
    """Why an edge case was decided without the textbook formula; empty otherwise."""


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test on paired pass/fail outcomes."""

    b: int
    """Items the baseline passed and the candidate failed."""
    c: int
    """Items the candidate passed and the baseline failed."""
    p_value: float
    """Two-sided exact binomial p-value of min(b, c) under Binomial(b + c, 1/2)."""


@dataclass(frozen=True)
class Interval:
    """A confidence interval around a point estimate: mean(candidate - baseline) for the
    paired intervals, a proportion for :func:`proportion_ci`."""

    low: float
    high: float
    mean: float
    """The point estimate."""
    confidence: float
    """Nominal coverage, e.g. 0.95."""


@dataclass(frozen=True)
class GateDecision:
    """Whether to deploy a candidate, with the numbers and sentences behind it."""

    deploy: bool
    improvement: float
    """Relative improvement of the mean, (mean_c - mean_b) / mean_b; the absolute
    difference when the baseline mean is 0."""
    baseline_mean: float
    candidate_mean: float
    mean_difference: float
    ci_low: float
    """Lower end of the paired t interval at confidence 1 - alpha."""
    ci_high: float
    p_value: float
    test: str
    """"mcnemar_exact" or "paired_t"."""
    effect_size: float
    """Cohen's d_z of the per-item differences."""
    n: int
    reasons: tuple[str, ...]
    """Human sentences explaining the decision."""


# --- input checks -------------------------------------------------------------------


def _as_array(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a non-empty list of finite numbers.")
    return arr


def _differences(baseline: Sequence[float], candidate: Sequence[float]) -> np.ndarray:
    """candidate - baseline, item by item; shape (n,)."""
    b = _as_array(baseline, "baseline")
    c = _as_array(candidate, "candidate")
    if b.size != c.size:
        raise ValueError(
            f"baseline and candidate must score the same items: got {b.size} and {c.size} scores."
        )
    return c - b


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}.")


def _is_constant(x: np.ndarray) -> bool:
    return float(np.ptp(x)) <= _ZERO_TOL * max(1.0, float(np.max(np.abs(x))))


def _signed_inf(x: float) -> float:
    return math.copysign(math.inf, x)


# --- hypothesis tests ---------------------------------------------------------------


def paired_t_test(baseline: Sequence[float], candidate: Sequence[float]) -> TestResult:
    """Two-sided paired t-test on d_i = candidate_i - baseline_i.

    t = mean(d) / (sd(d, ddof=1) / sqrt(n)) with n - 1 degrees of freedom
    (Student 1908; scipy.stats.ttest_rel).

    Edge cases, where the formula divides by zero:
    - n < 2: no variance can be estimated, so there is no evidence either way:
      statistic 0.0, p 1.0.
    - every d_i equal (sd = 0): if they are all 0 the models are indistinguishable
      (p 1.0). If they are all the same non-zero value, the candidate moved every
      item by exactly the same amount; t -> +-inf as sd -> 0, so p = 0.0 is the limit
      and the honest reading of a deterministic shift (scipy returns nan for the
      first and is at the mercy of float rounding for the second).
    """
    d = _differences(baseline, candidate)
    n = d.size
    if n < 2:
        return TestResult(0.0, 1.0, 0.0, "paired_t", n, "fewer than 2 pairs: no variance to test against")
    mean = float(d.mean())
    if _is_constant(d):
        if abs(mean) <= _ZERO_TOL:
            return TestResult(0.0, 1.0, float(n - 1), "paired_t", n, "all differences are zero")
        return TestResult(
            _signed_inf(mean), 0.0, float(n - 1), "paired_t", n,
            "every difference is the same non-zero value: a deterministic shift",
        )
    res = stats.ttest_rel(candidate, baseline)
    return TestResult(float(res.statistic), float(res.pvalue), float(n - 1), "paired_t", n)


def wilcoxon_signed_rank(baseline: Sequence[float], candidate: Sequence[float]) -> TestResult:
    """Two-sided Wilcoxon signed-rank test on d_i = candidate_i - baseline_i.

    Zero differences are dropped before ranking (Wilcoxon 1945; scipy's
    zero_method="wilcox"); differences within 1e-12 of zero count as zero so float
    rounding does not invent ranks. If nothing is left the models are
    indistinguishable: statistic 0.0, p 1.0.
    """
    d = _differences(baseline, candidate)
    d = np.where(np.abs(d) <= _ZERO_TOL, 0.0, d)
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        return TestResult(0.0, 1.0, 0.0, "wilcoxon_signed_rank", 0, "all differences are zero")
    res = stats.wilcoxon(d, zero_method="wilcox")
    return TestResult(float(res.statistic), float(res.pvalue), 0.0, "wilcoxon_signed_rank", nonzero)


def mcnemar_exact(baseline_pass: Sequence[bool], candidate_pass: Sequence[bool]) -> McNemarResult:
    """Exact two-sided McNemar test on paired pass/fail outcomes (McNemar 1947).

    Only discordant items carry information: b = baseline passed & candidate failed,
    c = the reverse. Under H0 each discordant item is a fair coin, so
    p = 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1
    (scipy.stats.binomtest). No discordant items: p = 1.0.
    """
    if len(baseline_pass) == 0 or len(baseline_pass) != len(candidate_pass):
        raise ValueError(
            "baseline_pass and candidate_pass must be non-empty and cover the same items: "
            f"got {len(baseline_pass)} and {len(candidate_pass)} outcomes."
        )
    bp = np.asarray(baseline_pass, dtype=bool)
    cp = np.asarray(candidate_pass, dtype=bool)
    b = int(np.sum(bp & ~cp))
    c = int(np.sum(~bp & cp))
    if b + c == 0:
        return McNemarResult(b, c, 1.0)
    return McNemarResult(b, c, float(stats.binomtest(min(b, c), b + c, 0.5).pvalue))


def independent_t_test(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Welch's two-sided t-test for unpaired samples, statistic for mean(b) - mean(a).

    The argument order matches the paired functions (a = baseline, b = candidate), so
    the sign is the reverse of scipy.stats.ttest_ind(a, b). t = (mean_b - mean_a) /
    sqrt(s_a^2/n_a + s_b^2/n_b) with Welch-Satterthwaite df (Welch 1947). Each sample
    needs 2 values for a variance; otherwise p 1.0. Both samples constant: same rule
    as :func:`paired_t_test` (equal means -> p 1.0, else +-inf and p 0.0).
    """
    xa = _as_array(a, "a")
    xb = _as_array(b, "b")
    n = xa.size + xb.size
    if xa.size < 2 or xb.size < 2:
        return TestResult(0.0, 1.0, 0.0, "welch_t", n, "each sample needs at least 2 values")
    diff = float(xb.mean() - xa.mean())
    if _is_constant(xa) and _is_constant(xb):
        if abs(diff) <= _ZERO_TOL:
            return TestResult(0.0, 1.0, 0.0, "welch_t", n, "both samples are the same constant")
        return TestResult(_signed_inf(diff), 0.0, 0.0, "welch_t", n, "both samples are constant and differ")
    res = stats.ttest_ind(xb, xa, equal_var=False)
    return TestResult(float(res.statistic), float(res.pvalue), float(res.df), "welch_t", n)


# --- effect sizes and intervals -----------------------------------------------------


def cohens_d_paired(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """Cohen's d_z = mean(d) / sd(d, ddof=1) for d = candidate - baseline (Cohen 1988).

    With n < 2 there is no sd and the result is 0.0. With sd = 0 it is 0.0 when the
    mean difference is 0 and math.inf with the sign of the mean otherwise: every item
    shifted identically is an unboundedly large standardised effect, and inf says so
    plainly (json.dumps writes it as Infinity) where a large finite stand-in would lie.
    """
    d = _differences(baseline, candidate)
    if d.size < 2:
        return 0.0
    mean = float(d.mean())
    if _is_constant(d):
        return 0.0 if abs(mean) <= _ZERO_TOL else _signed_inf(mean)
    return mean / float(d.std(ddof=1))


def cohens_d_pooled(a: Sequence[float], b: Sequence[float]) -> float:
    """Cohen's d = (mean_b - mean_a) / s_p for unpaired samples (Cohen 1988, eq. 2.5.2).

    s_p = sqrt(((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2)) with ddof=1
    variances. Same argument order and zero-sd rule as :func:`cohens_d_paired`;
    0.0 when n_a + n_b < 3 (no pooled variance).
    """
    xa = _as_array(a, "a")
    xb = _as_array(b, "b")
    dof = xa.size + xb.size - 2
    if dof < 1:
        return 0.0
    ss = float(np.sum((xa - xa.mean()) ** 2) + np.sum((xb - xb.mean()) ** 2))
    diff = float(xb.mean() - xa.mean())
    pooled = math.sqrt(ss / dof)
    if pooled <= _ZERO_TOL * max(1.0, float(np.max(np.abs(np.concatenate([xa, xb]))))):
        return 0.0 if abs(diff) <= _ZERO_TOL else _signed_inf(diff)
    return diff / pooled


def mean_difference_ci(
    baseline: Sequence[float], candidate: Sequence[float], confidence: float = 0.95
) -> Interval:
    """Paired t interval for mean(candidate - baseline).

    mean(d) +- t_{(1+confidence)/2, n-1} * sd(d, ddof=1) / sqrt(n). With n < 2 the
    interval is unbounded (-inf, inf); with sd = 0 it collapses to the mean.
    """
    _check_confidence(confidence)
    d = _differences(baseline, candidate)
    n = d.size
    mean = float(d.mean())
    if n < 2:
        return Interval(-math.inf, math.inf, mean, confidence)
    if _is_constant(d):
        return Interval(mean, mean, mean, confidence)
    se = float(d.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * se
    return Interval(mean - half, mean + half, mean, confidence)


def bootstrap_ci(
    baseline: Sequence[float],
    candidate: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """Paired percentile bootstrap interval for mean(candidate - baseline).

    Resamples items (keeping each baseline/candidate pair together) with replacement:
    one (n_resamples, n) index array, row means, then the (1-confidence)/2 and
    (1+confidence)/2 percentiles (Efron & Tibshirani 1993, ch. 13). Memory is
    n_resamples * n indices (10k x 1k items = 80 MB). Same seed, same interval.
    """
    _check_confidence(confidence)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}.")
    d = _differences(baseline, candidate)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_resamples, d.size))
    means = d[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return Interval(float(low), float(high), float(d.mean()), confidence)


def proportion_ci(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a pass rate of `successes` out of `n` (Wilson 1927).

    center = (p + z^2/2n) / (1 + z^2/n), half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)
    with p = successes/n and z the (1+confidence)/2 normal quantile. Unlike p +- z*se it
    stays inside [0, 1] and does not collapse to a point at 0 or n successes, which is where
    small models' HumanEval scores live. n = 0 gives the uninformative [0, 1].
    """
    _check_confidence(confidence)
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"proportion_ci needs 0 <= successes <= n, got {successes} of {n}.")
    if n == 0:
        return Interval(0.0, 1.0, 0.0, confidence)
    p = successes / n
    z = float(stats.norm.ppf((1.0 + confidence) / 2.0))
    shrink = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / shrink
    half = z / shrink * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(max(0.0, center - half), min(1.0, center + half), p, confidence)


# --- the deployment gate ------------------------------------------------------------


def _fmt_p(p: float) -> str:
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.3g}"


def gate(
    baseline: list[float],
    candidate: list[float],
    *,
    min_improvement: float = 0.05,
    alpha: float = 0.05,
    baseline_pass: list[bool] | None = None,
    candidate_pass: list[bool] | None = None,
) -> GateDecision:
    """Deploy the candidate only if it is better by a margin AND significantly so.

    baseline, candidate: per-item scores in [0, 1] on the same items in the same order.
    improvement = (mean_c - mean_b) / mean_b when mean_b > 0; with a zero baseline a
    relative margin is undefined (any gain is infinitely many percent), so the absolute
    difference is compared against min_improvement instead.

    Significance uses exact McNemar when pass/fail lists are given or every score is
    exactly 0 or 1 (then pass = score == 1), else the paired t-test. It requires
    p < alpha and the candidate ahead (higher mean; for McNemar also c > b). Reading a
    direction off a two-sided test is a deliberate, conservative choice: it is the
    one-sided test at alpha / 2, and a significantly worse candidate is never deployed.
    The reported interval is the paired t interval at confidence 1 - alpha.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha}.")
    d = _differences(baseline, candidate)
    b_arr = np.asarray(baseline, dtype=float)
    c_arr = np.asarray(candidate, dtype=float)
    if np.any((b_arr < 0) | (b_arr > 1) | (c_arr < 0) | (c_arr > 1)):
        raise ValueError("baseline and candidate scores must each lie between 0 and 1.")
    if (baseline_pass is None) != (candidate_pass is None):
        raise ValueError("baseline_pass and candidate_pass must be given together or not at all.")
    n = d.size
    if baseline_pass is not None and (len(baseline_pass) != n or len(candidate_pass) != n):
        raise ValueError(f"baseline_pass and candidate_pass must each have one outcome per scored item ({n}).")

    mean_b, mean_c = float(b_arr.mean()), float(c_arr.mean())
    mean_diff = mean_c - mean_b
    relative = mean_b > 0
    improvement = mean_diff / mean_b if relative else mean_diff

    binary = bool(np.all((b_arr == 0) | (b_arr == 1)) and np.all((c_arr == 0) | (c_arr == 1)))
    candidate_ahead = mean_c > mean_b
    if baseline_pass is not None or binary:
        bp = baseline_pass if baseline_pass is not None else list(b_arr == 1)
        cp = candidate_pass if candidate_pass is not None else list(c_arr == 1)
        mc = mcnemar_exact(bp, cp)
        p_value, test = mc.p_value, "mcnemar_exact"
        candidate_ahead = candidate_ahead and mc.c > mc.b
    else:
        p_value, test = paired_t_test(baseline, candidate).p_value, "paired_t"

    significant = p_value < alpha and candidate_ahead
    big_enough = improvement >= min_improvement
    deploy = significant and big_enough

    if relative:
        shown, needed, gap = f"{improvement:.1%}", f"{min_improvement:.1%}", f"{abs(improvement):.1%}"
    else:
        shown = f"{improvement:.3f} (absolute, as the baseline mean is 0)"
        needed, gap = f"{min_improvement:.3f}", f"{abs(improvement):.3f}"
    reasons: list[str] = []
    if deploy:
        reasons.append(f"candidate is better by {shown} ({_fmt_p(p_value)})")
    else:
        if not big_enough:
            reasons.append(f"improvement {shown} is below the required {needed}")
        if p_value >= alpha:
            reasons.append(f"{_fmt_p(p_value)} is not below alpha {alpha:g}")
        if mean_c < mean_b:
            reasons.append(f"candidate is worse than baseline by {gap} ({_fmt_p(p_value)})")
        elif mean_c == mean_b:
            reasons.append("candidate and baseline have the same mean score")
        elif not candidate_ahead:
            reasons.append("candidate has the higher mean but fails more items than it newly passes")

    ci = mean_difference_ci(baseline, candidate, confidence=1.0 - alpha)
    return GateDecision(
        deploy=deploy,
        improvement=float(improvement),
        baseline_mean=mean_b,
        candidate_mean=mean_c,
        mean_difference=float(mean_diff),
        ci_low=ci.low,
        ci_high=ci.high,
        p_value=float(p_value),
        test=test,
        effect_size=cohens_d_paired(baseline, candidate),
        n=n,
        reasons=tuple(reasons),
    )


# --- learning curve -----------------------------------------------------------------


def _slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of value over session index; 0.0 with fewer than 2 points."""
    if len(points) < 2:
        return 0.0
    x, y = zip(*points)
    return float(np.polyfit(np.asarray(x, dtype=float), np.asarray(y, dtype=float), 1)[0])


def learning_curve(history: list[dict]) -> dict:
    """Summarise training sessions, oldest first.

    Each item: {"train_loss": float | None, "eval_loss": float | None,
    "performance": float | None}; missing keys and None values are skipped.
    Slopes are np.polyfit degree-1 fits against the session's index in history
    (not its rank among non-None values), so a skipped session keeps the spacing.
    overfitting_indicator = mean of the last (up to) 3 eval losses - mean of the last
    (up to) 3 train losses; positive and growing suggests overfitting; 0.0 unless both
    exist. current_* and best_performance are None when no value was recorded.
    """
    series: dict[str, list[tuple[int, float]]] = {"train_loss": [], "eval_loss": [], "performance": []}
    for i, record in enumerate(history):
        for key, points in series.items():
            value = record.get(key)
            if value is not None:
                points.append((i, float(value)))
    train = [v for _, v in series["train_loss"]]
    evals = [v for _, v in series["eval_loss"]]
    perf = [v for _, v in series["performance"]]
    overfit = float(np.mean(evals[-3:]) - np.mean(train[-3:])) if train and evals else 0.0
    return {
        "total_sessions": len(history),
        "loss_slope": _slope(series["train_loss"]),
        "overfitting_indicator": overfit,
        "performance_trend": _slope(series["performance"]),
        "current_train_loss": train[-1] if train else None,
        "current_eval_loss": evals[-1] if evals else None,
        "best_performance": max(perf) if perf else None,
    }
