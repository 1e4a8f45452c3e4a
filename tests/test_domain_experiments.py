"""Experiments as pure functions: assignment (stable, balanced at the weights), the planned
sample size, the intervals, and the sequential test — seeded simulations of many experiments
read repeatedly as data arrives: with no true difference a winner is called no more often than
alpha; with a real one the better variant is found."""

from __future__ import annotations

import random
import uuid

import pytest

from app.attribution.experiments import (
    VariantCounts,
    assign_variant,
    decide,
    mean,
    proportion,
    ratio,
    required_sample_size,
)

ALPHA, EFFECT, BASELINE, POWER = 0.05, 0.05, 0.10, 0.8
EXPERIMENT = uuid.UUID("9b7c1a43-8f8e-4c44-a3c5-0d62d1b6b0aa")


def test_assignment_is_stable_and_balanced_at_the_weights() -> None:
    weights = [("A", 1), ("B", 3)]
    advocates = [uuid.UUID(int=random.Random(7).getrandbits(128) + i) for i in range(20_000)]
    first = [assign_variant(EXPERIMENT, a, weights) for a in advocates]
    # The same advocate gets the same variant however often it is asked (a restart, another
    # machine): it is a hash, not a draw.
    assert first == [assign_variant(EXPERIMENT, a, weights) for a in advocates]
    share_b = first.count("B") / len(first)
    assert abs(share_b - 0.75) < 0.015  # four standard errors at n = 20,000
    # Another experiment shuffles advocates anew.
    other = [assign_variant(uuid.uuid4(), a, weights) for a in advocates[:2000]]
    assert other != first[:2000]


def test_the_planned_sample_size_follows_the_two_proportion_formula() -> None:
    # 10 % vs 15 %, two-sided 5 %, power 80 %: the textbook figure is about 686 per group.
    assert required_sample_size(0.10, 0.05, 0.05, 0.80) == 686
    assert required_sample_size(0.10, 0.02, 0.05, 0.80) > required_sample_size(
        0.10, 0.05, 0.05, 0.80
    )
    assert required_sample_size(0.10, 0.05, 0.05, 0.90) > 686


def test_intervals_hold_their_estimate() -> None:
    p = proportion(30, 100)
    assert p.value == 0.3 and p.low is not None and p.high is not None
    assert p.low < 0.3 < p.high and p.low > 0.2 and p.high < 0.4
    m = mean([1.0, 2.0, 3.0, 4.0])
    assert m.value == 2.5 and m.low is not None and m.high is not None and m.low < 2.5 < m.high
    r = ratio([100.0, 300.0, 200.0], [1.0, 2.0, 1.0])
    assert r.value == 150.0
    assert proportion(0, 0).value is None and ratio([1.0], [0.0]).value is None


def _simulate(rate_a: float, rate_b: float, seed: int) -> tuple[str | None, int]:
    """One experiment, read every 50 advocates per variant up to 2,000: the first winner."""
    rng = random.Random(seed)
    a = b = n = 0
    for look in range(50, 2001, 50):
        while n < look:
            a += rng.random() < rate_a
            b += rng.random() < rate_b
            n += 1
        answer = decide([VariantCounts("A", n, a), VariantCounts("B", n, b)], BASELINE, EFFECT,
                        ALPHA, POWER)  # fmt: skip
        if answer.verdict == "winner":
            return answer.winner, n
    return None, n


def test_peeking_at_every_look_calls_a_false_winner_no_more_often_than_alpha() -> None:
    runs = 400
    false_winners = sum(_simulate(0.10, 0.10, seed)[0] is not None for seed in range(runs))
    # At most alpha, with room for the simulation's own noise (two standard errors).
    assert false_winners / runs <= ALPHA + 2 * (ALPHA * (1 - ALPHA) / runs) ** 0.5


def test_a_real_difference_is_found_and_the_right_variant_named() -> None:
    outcomes = [_simulate(0.10, 0.16, 1000 + seed) for seed in range(100)]
    assert sum(winner == "B" for winner, _ in outcomes) >= 90
    assert not any(winner == "A" for winner, _ in outcomes)


@pytest.mark.parametrize(
    ("counts", "verdict", "words"),
    [
        ([("A", 40, 4), ("B", 40, 5)], "not_enough_data", "not enough data yet: 40 of 686"),
        ([("A", 800, 80), ("B", 800, 82)], "no_difference", "no difference detected"),
        ([("A", 800, 80), ("B", 800, 160)], "winner", "variant B is better on the referral rate"),
        ([("A", 800, 160), ("B", 800, 80)], "winner", "variant A is better on the referral rate"),
    ],
)
def test_the_answer_in_words(counts: list[tuple[str, int, int]], verdict: str, words: str) -> None:
    answer = decide([VariantCounts(*c) for c in counts], BASELINE, EFFECT, ALPHA, POWER)
    assert answer.verdict == verdict and words in answer.words, answer.words
