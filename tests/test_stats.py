"""Bootstrap confidence intervals and McNemar's test on known cases, checked against scipy and statsmodels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from potstill.evaluate.compare import summarize
from potstill.evaluate.stats import bootstrap_ci, is_binary, mcnemar, paired_bootstrap, paired_diff_ci, resampled_means

B = 20_000


def _scipy_ci(data, statistic, paired=False, seed=123):
    res = sps.bootstrap(
        data,
        statistic,
        paired=paired,
        vectorized=False,
        n_resamples=B,
        method="percentile",
        confidence_level=0.95,
        rng=np.random.default_rng(seed),
    )
    return res.confidence_interval.low, res.confidence_interval.high


@pytest.fixture(scope="module")
def binary_pair():
    rng = np.random.default_rng(7)
    teacher = (rng.random(300) < 0.8).astype(float)
    flip = rng.random(300) < 0.2  # the student disagrees with the teacher on ~20% of the items
    student = np.where(flip, 1 - teacher, teacher)
    return student, teacher


def test_mean_ci_matches_scipy_bootstrap(binary_pair):
    student, _ = binary_pair
    ours = bootstrap_ci(student, samples=B, seed=1)
    ref = _scipy_ci((student,), np.mean)
    assert ours == pytest.approx(ref, abs=0.008)  # Monte-Carlo noise of two independent 20k-resample runs
    # and the normal approximation of a proportion's interval is close for n=300
    p, se = student.mean(), student.std(ddof=0) / np.sqrt(len(student))
    assert ours == pytest.approx([p - 1.96 * se, p + 1.96 * se], abs=0.01)


def test_paired_difference_ci_matches_scipy_paired_bootstrap(binary_pair):
    student, teacher = binary_pair
    ours = paired_diff_ci(student, teacher, samples=B, seed=2)
    ref = _scipy_ci((student, teacher), lambda a, b: np.mean(a) - np.mean(b), paired=True)
    assert ours == pytest.approx(ref, abs=0.008)
    # pairing matters: the paired interval is much narrower than treating the samples as independent
    unpaired = _scipy_ci((student, teacher), lambda a, b: np.mean(a) - np.mean(b), paired=False)
    assert (ours[1] - ours[0]) < 0.8 * (unpaired[1] - unpaired[0])


def test_paired_bootstrap_ratios_match_scipy(binary_pair):
    student, teacher = binary_pair
    rng = np.random.default_rng(3)
    floor = (rng.random(300) < 0.1).astype(float)
    out = paired_bootstrap({"teacher": teacher, "s": student, "floor": floor}, "teacher", "floor", samples=B, seed=4)
    pct = _scipy_ci((student, teacher), lambda a, b: 100 * np.mean(a) / np.mean(b), paired=True)
    gap = _scipy_ci(
        (student, teacher, floor), lambda a, b, f: (np.mean(a) - np.mean(f)) / (np.mean(b) - np.mean(f)), paired=True
    )
    assert out["s"]["pct_of_teacher"] == pytest.approx(pct, abs=1.0)  # percentage points
    assert out["s"]["gap_recovered"] == pytest.approx(gap, abs=0.015)
    assert out["teacher"]["diff_vs_teacher"] == [0.0, 0.0]
    assert out["teacher"]["pct_of_teacher"] == pytest.approx([100.0, 100.0])
    assert out["teacher"]["gap_recovered"] == pytest.approx([1.0, 1.0])
    assert out["floor"]["gap_recovered"] == pytest.approx([0.0, 0.0])
    lo, hi = out["s"]["score"]
    assert lo < student.mean() < hi


def test_bootstrap_edge_cases():
    assert bootstrap_ci([1.0] * 50, samples=200) == [1.0, 1.0]  # degenerate: zero width, no NaN
    assert bootstrap_ci([], samples=200) is None
    assert bootstrap_ci([0.3], samples=200) == [0.3, 0.3]
    a = bootstrap_ci(np.linspace(0, 1, 40), samples=500, seed=9)
    assert a == bootstrap_ci(np.linspace(0, 1, 40), samples=500, seed=9)  # reproducible from the seed
    assert a != bootstrap_ci(np.linspace(0, 1, 40), samples=500, seed=10)
    out = paired_bootstrap({"t": [0.0] * 10, "s": [1.0] * 10}, "t", samples=200)
    assert out["s"]["pct_of_teacher"] is None and out["s"]["gap_recovered"] is None  # teacher mean 0: undefined
    with pytest.raises(ValueError):
        resampled_means({"a": [1, 0], "b": [1]}, samples=10)
    # chunking does not change the draws' distribution: many resamples over one chunk boundary
    m = resampled_means({"x": np.arange(10.0)}, samples=2500, seed=0)["x"]
    assert m.shape == (2500,) and m.mean() == pytest.approx(4.5, abs=0.1)


@pytest.mark.parametrize(
    "a_only,b_only,both,neither",
    [(1, 9, 50, 40), (12, 3, 100, 20), (5, 5, 10, 10), (0, 0, 7, 3), (30, 10, 200, 60), (0, 4, 1, 1)],
)
def test_mcnemar_matches_statsmodels(a_only, b_only, both, neither):
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    a = [1] * a_only + [0] * b_only + [1] * both + [0] * neither
    b = [0] * a_only + [1] * b_only + [1] * both + [0] * neither
    res = mcnemar(a, b)
    assert (res["a_only"], res["b_only"], res["discordant"]) == (a_only, b_only, a_only + b_only)
    table = [[both, a_only], [b_only, neither]]
    assert res["p_exact"] == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-9, abs=1e-12)
    # mid-p (Fagerland et al. 2013): 2 * (P(X <= k) - P(X = k) / 2), capped at 1
    n, k = a_only + b_only, min(a_only, b_only)
    midp = 1.0 if n == 0 else min(1.0, 2 * (sps.binom.cdf(k, n, 0.5) - 0.5 * sps.binom.pmf(k, n, 0.5)))
    assert res["p_midp"] == pytest.approx(midp, rel=1e-9, abs=1e-12)
    assert res["p_midp"] <= res["p_exact"]


def test_mcnemar_hand_computed():
    # b = 1, c = 9: exact p = 2 * (1 + 10) / 1024, mid-p = 2 * (1 + 10/2) / 1024
    res = mcnemar([1] + [0] * 9, [0] + [1] * 9)
    assert res["p_exact"] == pytest.approx(22 / 1024) and res["p_midp"] == pytest.approx(12 / 1024)
    with pytest.raises(ValueError):
        mcnemar([0.5, 1], [1, 1])


def test_is_binary():
    assert is_binary([0, 1, 1.0]) and not is_binary([0, 0.5]) and not is_binary([])


def test_summarize_statistics(binary_pair):
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    student, teacher = binary_pair
    floor = np.zeros(300)
    scores = {"teacher": list(teacher), "kd": list(student), "floor": list(floor)}
    roles = {"teacher": "teacher", "kd": "student", "floor": "floor"}
    records = [{"category": "a" if i % 3 else "b"} for i in range(300)]
    out = summarize(scores, roles, records, {n: [0.5] * 300 for n in scores}, samples=2000, seed=0)
    kd = out["kd"]
    assert kd["score"] == pytest.approx(student.mean()) and kd["binary"]
    table = [
        [int(((student == 1) & (teacher == 1)).sum()), int(((student == 1) & (teacher == 0)).sum())],
        [int(((student == 0) & (teacher == 1)).sum()), int(((student == 0) & (teacher == 0)).sum())],
    ]
    assert kd["mcnemar_p"] == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-6)
    assert kd["mcnemar_discordant"] == table[0][1] + table[1][0]
    assert kd["ci95"][0] < kd["score"] < kd["ci95"][1]
    assert kd["diff_ci95"][0] < kd["diff_vs_teacher"] < kd["diff_ci95"][1]
    assert kd["pct_of_teacher_ci95"][0] < kd["pct_of_teacher"] < kd["pct_of_teacher_ci95"][1]
    assert kd["gap_recovered"] == pytest.approx(student.mean() / teacher.mean())
    assert kd["per_category_n"] == {"a": 200, "b": 100} and set(kd["per_category_ci95"]) == {"a", "b"}
    assert out["teacher"]["mcnemar_p"] is None and out["floor"]["mcnemar_p"] is not None
    half = summarize(
        {"teacher": [1.0, 0.5], "kd": [0.5, 0.5]},
        {"teacher": "teacher", "kd": "student"},
        [{}, {}],
        {"teacher": [1, 1], "kd": [1, 1]},
        samples=200,
    )
    assert half["kd"]["binary"] is False and half["kd"]["mcnemar_p"] is None and half["kd"]["gap_recovered"] is None
