"""Reward experiments: which variant an advocate gets, and an honest answer to "which offer works
better".

- **Assignment** is a hash of (experiment, advocate) onto the variants' weights: deterministic
  (the same advocate always gets the same variant, on any machine, after any restart) and
  balanced at the weights. The service stores it when the advocate is enrolled or the experiment
  starts, and every conversion and reward records the variant.
- **The decision metric** is the *referral rate*: the share of a variant's advocates who brought
  at least one converting friend. The advocate is the unit that was randomised, so each counts
  once and the outcomes are independent — a per-click rate would count one advocate's friends
  as independent draws and call winners too often.
- **The test stays valid however often it is looked at**: a mixture sequential probability
  ratio test (mSPRT, Johari, Koomen, Pekelis & Walsh, "Peeking at A/B tests", KDD 2017) on the
  difference of two proportions, normal mixing distribution with its scale at the minimum
  detectable effect. By Ville's inequality the chance that it *ever* crosses 1/alpha when the
  variants are equal is at most alpha, so a merchant may read the results daily. Each variant is
  compared with the first (the control); with more than two variants alpha is split among the
  comparisons (Bonferroni). The confidence interval shown with a winner is the matching
  always-valid confidence sequence.
- **The sample size** to plan for comes from the minimum detectable effect the merchant states,
  at the stated alpha and power (the two-proportion normal formula). Without a crossing, the
  answer is "not enough data yet" until every variant has it, then "no difference detected".
Distributions and quantiles come from scipy; nothing reads a clock or a database.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID


def _stats() -> Any:  # scipy has no type hints
    """scipy.stats, imported on first use: it is over a second of every process's start
    (the API's, each flusher's) that only an experiment's results page needs."""
    from scipy import stats

    return stats


def assign_variant(experiment: UUID, advocate: UUID, weights: Sequence[tuple[str, int]]) -> str:
    """The variant key for this advocate: a point in [0, total weight) from SHA-256 of the two
    ids, mapped onto the variants in order."""
    total = sum(w for _, w in weights)
    digest = hashlib.sha256(f"{experiment}:{advocate}".encode()).digest()
    point = int.from_bytes(digest[:8]) % total
    for key, weight in weights:
        if point < weight:
            return key
        point -= weight
    raise AssertionError("unreachable: the point lies below the total weight")


# -- Intervals ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    value: float | None
    low: float | None
    high: float | None

    def as_json(self) -> dict[str, float | None]:
        return {"value": _round(self.value), "low": _round(self.low), "high": _round(self.high)}


NONE = Estimate(None, None, None)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def proportion(successes: int, trials: int, confidence: float = 0.95) -> Estimate:
    """A proportion with its Wilson score interval."""
    if trials == 0:
        return NONE
    ci = _stats().binomtest(successes, trials).proportion_ci(confidence, method="wilson")
    return Estimate(successes / trials, float(ci.low), float(ci.high))


def mean(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """A mean with its t interval (one value per advocate)."""
    n = len(values)
    if n == 0:
        return NONE
    m = sum(values) / n
    if n == 1:
        return Estimate(m, None, None)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = float(_stats().t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Estimate(m, m - half, m + half)


def ratio(numerators: Sequence[float], denominators: Sequence[float],
          confidence: float = 0.95) -> Estimate:  # fmt: skip
    """Σ numerator / Σ denominator over advocates, with a delta-method interval (e.g. reward
    cost per conversion: each advocate's cost over each advocate's conversions)."""
    n, total = len(numerators), sum(denominators)
    if n == 0 or total == 0:
        return NONE
    r = sum(numerators) / total
    if n == 1:
        return Estimate(r, None, None)
    mean_denominator = total / n
    residuals = [x - r * y for x, y in zip(numerators, denominators, strict=True)]
    mr = sum(residuals) / n
    var = sum((e - mr) ** 2 for e in residuals) / (n - 1)
    half = float(_stats().norm.ppf(0.5 + confidence / 2)) * math.sqrt(var / n) / mean_denominator
    return Estimate(r, r - half, r + half)


# -- Planning and deciding ----------------------------------------------------------------------


def required_sample_size(baseline: float, effect: float, alpha: float, power: float) -> int:
    """Advocates per variant to detect `effect` (absolute) on a `baseline` referral rate with a
    two-sided test at `alpha` and the given power."""
    p1, p2 = baseline, min(baseline + effect, 1.0)
    p_bar = (p1 + p2) / 2
    z_alpha = float(_stats().norm.ppf(1 - alpha / 2))
    z_power = float(_stats().norm.ppf(power))
    n = (z_alpha * math.sqrt(2 * p_bar * (1 - p_bar))
         + z_power * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / effect**2  # fmt: skip
    return math.ceil(n)


@dataclass(frozen=True, slots=True)
class Comparison:
    """A variant against the control on the referral rate."""

    variant: str
    difference: float | None  # variant minus control, absolute
    low: float | None  # the always-valid confidence sequence at this look
    high: float | None
    likelihood_ratio: float
    significant: bool


def msprt(successes_a: int, n_a: int, successes_b: int, n_b: int, tau: float,
          alpha: float) -> Comparison:  # fmt: skip
    """The mixture SPRT of p_b = p_a at this look (normal approximation; each side needs some
    successes and failures for the variance to mean anything)."""
    if min(n_a, n_b) == 0:
        return Comparison("", None, None, None, 1.0, False)
    pa, pb = successes_a / n_a, successes_b / n_b
    difference = pb - pa
    # The variance of the difference, with the pooled rate guarding against 0 at the start.
    pooled = (successes_a + successes_b) / (n_a + n_b)
    v = max(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b, pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if v <= 0:
        return Comparison("", difference, None, None, 1.0, False)
    t2 = tau * tau
    log_lr = 0.5 * math.log(v / (v + t2)) + t2 * difference**2 / (2 * v * (v + t2))
    likelihood_ratio = math.exp(min(log_lr, 700.0))
    half = math.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + math.log((v + t2) / v)))
    return Comparison("", difference, difference - half, difference + half, likelihood_ratio,
                      likelihood_ratio >= 1 / alpha)  # fmt: skip


@dataclass(frozen=True, slots=True)
class VariantCounts:
    key: str
    advocates: int
    referrers: int  # advocates with at least one converting friend


@dataclass(frozen=True, slots=True)
class Answer:
    verdict: str  # "not_enough_data" | "no_difference" | "winner"
    words: str
    winner: str | None
    required_per_variant: int
    comparisons: tuple[Comparison, ...]


def decide(variants: Sequence[VariantCounts], baseline: float, effect: float, alpha: float,
           power: float) -> Answer:  # fmt: skip
    """The answer in words, at this look. The first variant is the control."""
    required = required_sample_size(baseline, effect, alpha, power)
    control, others = variants[0], variants[1:]
    per_test_alpha = alpha / max(1, len(others))
    comparisons = []
    for v in others:
        c = msprt(control.referrers, control.advocates, v.referrers, v.advocates, effect,
                  per_test_alpha)  # fmt: skip
        comparisons.append(Comparison(v.key, c.difference, c.low, c.high, c.likelihood_ratio,
                                      c.significant))  # fmt: skip
    better = [c for c in comparisons if c.significant and (c.difference or 0) > 0]
    worse = [c for c in comparisons if c.significant and (c.difference or 0) < 0]
    if better:
        best = max(better, key=lambda c: c.difference or 0)
        return Answer("winner", f"variant {best.variant} is better on the referral rate by "
                      f"{_points(best.difference)} (interval {_points(best.low)} to "
                      f"{_points(best.high)}) than {control.key}", best.variant, required,
                      tuple(comparisons))  # fmt: skip
    if worse and len(worse) == len(others):
        return Answer("winner", f"variant {control.key} is better on the referral rate than "
                      + ", ".join(f"{c.variant} (by {_points(-(c.difference or 0))})"
                                  for c in worse), control.key, required,
                      tuple(comparisons))  # fmt: skip
    smallest = min(v.advocates for v in variants)
    if smallest < required:
        return Answer("not_enough_data", f"not enough data yet: {smallest} of {required} "
                      "advocates in the smallest variant", None, required,
                      tuple(comparisons))  # fmt: skip
    return Answer("no_difference", f"no difference detected with {smallest} advocates per "
                  f"variant (the planned {required} reached)", None, required,
                  tuple(comparisons))  # fmt: skip


def _points(x: float | None) -> str:
    return "?" if x is None else f"{x * 100:+.1f} points"
