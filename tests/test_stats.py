"""Bootstrap confidence intervals and McNemar's test on known cases, checked against scipy and statsmodels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from potstill.evaluate.compare import student_pairs, summarize
from potstill.evaluate.stats import (
    bootstrap_ci,
    is_binary,
    mcnemar,
    paired_bootstrap,
    paired_diff_ci,
    paired_difference,
    resampled_means,
)
from potstill.report.tables import pair_line

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


@pytest.fixture(scope="module")
def toy_trio():
    """Graded (non-binary) scores of a teacher and two students on 40 shared prompts."""
    rng = np.random.default_rng(11)
    teacher = rng.uniform(0.5, 1.0, 40)
    sft = np.clip(teacher - rng.uniform(0.0, 0.4, 40), 0, 1)  # kd keeps more of the teacher than sft
    kd = np.clip(teacher - rng.uniform(0.0, 0.15, 40), 0, 1)
    return teacher, sft, kd


def test_paired_difference_matches_a_float64_numpy_reference(toy_trio):
    teacher, sft, kd = toy_trio
    ours = paired_difference(kd, sft, teacher, samples=1000, seed=5)
    # the reference: one [1000, n] index draw from the same generator, applied to all three score vectors
    idx = np.random.default_rng(5).integers(0, 40, size=(1000, 40), dtype=np.int32)
    a, b, t = (np.asarray(x, dtype=np.float64)[idx].mean(axis=1) for x in (kd, sft, teacher))
    assert ours["diff"] == pytest.approx(np.quantile(a - b, [0.025, 0.975]), abs=1e-12)
    assert ours["pct_points"] == pytest.approx(np.quantile(100 * (a - b) / t, [0.025, 0.975]), abs=1e-9)
    assert ours["diff"][0] < kd.mean() - sft.mean() < ours["diff"][1]
    assert paired_diff_ci(kd, sft, samples=1000, seed=5) == ours["diff"]  # the older helper is the same interval
    assert paired_difference(kd, sft, samples=1000, seed=5)["pct_points"] is None  # no reference, no points
    assert paired_difference([], [], [], samples=100) == {"diff": None, "pct_points": None}


def test_identical_students_differ_by_exactly_zero(toy_trio):
    teacher, _, kd = toy_trio
    assert paired_difference(kd, kd, teacher, samples=500, seed=0) == {"diff": [0.0, 0.0], "pct_points": [0.0, 0.0]}
    roles = {"teacher": "teacher", "sft": "student", "kd": "student"}
    records = [{"category": "a" if i % 2 else "b"} for i in range(40)]
    (pair,) = student_pairs({"teacher": list(teacher), "sft": list(kd), "kd": list(kd)}, roles, records, samples=500)
    assert pair["diff"] == 0.0 and pair["diff_ci95"] == [0.0, 0.0] and pair["pct_points_ci95"] == [0.0, 0.0]
    assert pair["better"] is None and all(c["diff_ci95"] == [0.0, 0.0] for c in pair["per_category"].values())
    assert pair_line(pair, "ood").endswith("95% CI [+0.0, +0.0]: no clear difference.")


def test_student_pairs_orientation_later_method_minus_earlier(toy_trio):
    teacher, sft, kd = toy_trio
    scores = {"teacher": list(teacher), "sft": list(sft), "kd": list(kd), "floor": [0.0] * 40}
    records = [{"category": ["x", "y", "z"][i % 3]} for i in range(40)]
    roles = {"teacher": "teacher", "sft": "student", "kd": "student", "floor": "floor"}
    (pair,) = student_pairs(scores, roles, records, samples=1000, seed=3)
    assert (pair["a"], pair["b"]) == ("kd", "sft") and pair["n"] == 40
    assert pair["diff"] == pytest.approx(kd.mean() - sft.mean(), abs=1e-6) and pair["diff"] > 0
    assert pair["diff_ci95"][0] > 0 and pair["better"] == "kd"
    # points of teacher % are the students' % of teacher subtracted, from the same resamples as summarize's
    per_model = summarize(scores, roles, records, {n: [0.0] * 40 for n in scores}, samples=1000, seed=3)
    assert pair["pct_points"] == pytest.approx(
        per_model["kd"]["pct_of_teacher"] - per_model["sft"]["pct_of_teacher"], abs=2e-3
    )
    assert pair["pct_points_ci95"] == pytest.approx(
        paired_difference(kd, sft, teacher, samples=1000, seed=3)["pct_points"], abs=1e-3
    )
    # per category: the category's own means, seeded as summarize's per-category intervals
    xs = [i for i in range(40) if i % 3 == 0]
    x = pair["per_category"]["x"]
    assert x["n"] == len(xs) and x["diff"] == pytest.approx(kd[xs].mean() - sft[xs].mean(), abs=1e-6)
    ref = paired_difference(kd[xs], sft[xs], teacher[xs], 1000, seed=4)["diff"]
    assert x["diff_ci95"] == pytest.approx(ref, abs=1e-6)  # stored to 6 decimals
    # methods in the other order: the pair flips, and so does its interval (same resamples)
    flipped_roles = {"teacher": "teacher", "kd": "student", "sft": "student"}
    (back,) = student_pairs(scores, flipped_roles, records, samples=1000, seed=3)
    assert (back["a"], back["b"], back["better"]) == ("sft", "kd", "kd")
    assert back["diff"] == pytest.approx(-pair["diff"]) and back["pct_points"] == pytest.approx(-pair["pct_points"])
    assert back["diff_ci95"] == pytest.approx([-pair["diff_ci95"][1], -pair["diff_ci95"][0]], abs=1e-6)
    assert student_pairs(scores, roles, records, samples=1000, seed=3) == [pair]  # deterministic under the seed
    assert pair_line(pair, "test").startswith("kd − sft on Test: +")


def test_student_pairs_with_three_one_or_no_teacher_signal():
    rng = np.random.default_rng(2)
    t = list((rng.random(30) < 0.7).astype(float))
    scores = {"teacher": t, "sft": t[::-1], "kd": t, "gkd": [1.0] * 30}
    roles = {"teacher": "teacher", "sft": "student", "kd": "student", "gkd": "student"}
    pairs = student_pairs(scores, roles, [{}] * 30, samples=200)
    assert [(p["a"], p["b"]) for p in pairs] == [("kd", "sft"), ("gkd", "sft"), ("gkd", "kd")]
    assert all(p["per_category"] == {} for p in pairs)
    assert student_pairs({"teacher": t, "kd": t}, {"teacher": "teacher", "kd": "student"}, [{}] * 30) == []
    (zero,) = student_pairs(
        {"teacher": [0.0] * 30, "sft": [0.0] * 30, "kd": [1.0] * 30},
        {"teacher": "teacher", "sft": "student", "kd": "student"},
        [{}] * 30,
        samples=200,
    )
    assert zero["pct_points"] is None and zero["pct_points_ci95"] is None and zero["better"] == "kd"
    assert pair_line(zero, "test") == "kd − sft on Test: +1.000 in score, 95% CI [+1.000, +1.000]: kd better."
