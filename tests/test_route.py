"""Routing maths: confidence features, the routing curve, APGR, threshold choice, checks, the logistic router,
and the decode-time confidence records against a teacher-forced float64 pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from potstill.route.calibrate import apgr, check, choose, curve, fit_logistic
from potstill.route.features import FEATURES, LOGISTIC_FEATURES, Router, features


def test_features_match_a_direct_computation():
    steps = [(-0.1, 0.5), (-2.0, 1.5), (-0.01, 0.1), (-0.5, 0.9)]
    f = features(steps)
    lp = np.array([s[0] for s in steps])
    p = np.sort(np.exp(lp))
    assert set(f) == set(FEATURES)
    assert f["mean_logprob"] == pytest.approx(lp.mean())
    assert f["min_logprob"] == pytest.approx(-2.0)
    # linear-interpolation quantile by hand: position q * (n - 1) in the sorted probabilities
    pos = 0.1 * 3
    assert f["p10"] == pytest.approx(p[0] + pos * (p[1] - p[0]))
    assert f["p50"] == pytest.approx((p[1] + p[2]) / 2)
    assert f["mean_entropy"] == pytest.approx(0.75) and f["max_entropy"] == 1.5 and f["tokens"] == 4
    empty = features([])
    assert empty["p10"] == 0.0 and empty["mean_logprob"] < -10  # no kept token: maximally unsure


def brute_force_quality(scores, student, teacher, threshold):
    return sum(t if s < threshold else a for s, a, t in zip(scores, student, teacher)) / len(scores)


def test_curve_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=40).astype(float)  # many ties
    student = rng.integers(0, 2, size=40).astype(float)
    teacher = rng.integers(0, 2, size=40).astype(float)
    pts = curve(scores, student, teacher)
    assert pts[0]["share"] == 0 and pts[-1]["share"] == 1
    assert pts[0]["quality"] == pytest.approx(student.mean()) and pts[-1]["quality"] == pytest.approx(teacher.mean())
    assert len(pts) == len(set(scores)) + 1  # one cut per distinct score, plus "everything"
    for p in pts:
        routed = int((scores < p["threshold"]).sum())
        assert routed == p["k"]
        assert p["quality"] == pytest.approx(brute_force_quality(scores, student, teacher, p["threshold"]))


def test_apgr_oracle_random_and_no_gap():
    student, teacher = [0, 0, 1, 1], [1, 1, 1, 1]
    oracle = curve([0.1, 0.2, 0.8, 0.9], student, teacher)  # failures score lowest
    # normalized quality 0, .5, 1, 1, 1 at shares 0, .25, .5, .75, 1 -> trapezoids
    assert apgr(oracle) == pytest.approx(0.25 * 0.25 + 0.25 * 0.75 + 0.25 + 0.25)
    worst = curve([0.9, 0.8, 0.1, 0.2], student, teacher)
    assert apgr(worst) == pytest.approx(0.25 * 0.25 + 0.25 * 0.75)  # normalized 0, 0, 0, .5, 1: 0.25
    rng = np.random.default_rng(1)
    s = rng.integers(0, 2, 2000).astype(float)
    rand = apgr(curve(rng.random(2000), s, np.ones(2000)))
    assert abs(rand - 0.5) < 0.03  # random routing recovers the gap linearly
    assert apgr(curve([0.5, 0.6], [1, 1], [1, 0])) is None  # teacher not better: nothing to recover


def test_choose_target_quality_and_cap():
    pts = curve([0.1, 0.2, 0.3, 0.4, 0.5], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1])  # qualities .6 .8 1 1 1 1
    c = choose(pts, target_pct=80.0)
    assert c["met"] and c["k"] == 1 and c["quality"] == pytest.approx(0.8)
    assert 0.1 < c["threshold"] <= 0.2
    c = choose(pts, target_pct=100.0)
    assert c["k"] == 2 and c["met"]
    c = choose(pts, target_pct=100.0, max_share=0.2)  # cap binds: best within it, target missed
    assert c["k"] == 1 and not c["met"]
    c = choose(pts, max_share=0.6)  # cap alone: best quality, fewest calls on ties
    assert c["k"] == 2 and c["met"]
    assert choose(pts, target_pct=50.0)["k"] == 0  # the student alone is enough
    with pytest.raises(ValueError):
        choose(pts)


def test_check_intervals_match_statsmodels_and_bootstrap():
    from statsmodels.stats.proportion import proportion_confint

    rng = np.random.default_rng(2)
    scores, student, teacher = rng.random(200), rng.integers(0, 2, 200).astype(float), np.ones(200)
    c = check(scores, student, teacher, threshold=0.3, samples=2000, seed=0)
    k = int((scores < 0.3).sum())
    assert c["teacher_calls"] == k and c["share"] == pytest.approx(k / 200)
    lo, hi = proportion_confint(k, 200, alpha=0.05, method="wilson")
    assert c["share_ci95"] == pytest.approx([lo, hi], abs=1e-6)
    blended = np.where(scores < 0.3, teacher, student)
    assert c["quality"] == pytest.approx(blended.mean())
    assert c["quality_ci95"][0] < blended.mean() < c["quality_ci95"][1]
    assert c["pct_of_teacher"] == pytest.approx(100 * blended.mean())


def test_logistic_router_matches_sklearn_and_separates():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    n = 300
    good = rng.random(n) < 0.6
    feats = []
    for g in good:  # good answers: higher token probabilities, lower entropy
        steps = [
            (
                float(np.log(rng.uniform(0.6, 1.0) if g else rng.uniform(0.05, 0.9))),
                float(rng.uniform(0, 1 if g else 2)),
            )
            for _ in range(8)
        ]
        feats.append(features(steps))
    student, teacher = good.astype(float), np.ones(n)
    spec = fit_logistic(feats, student, teacher)
    router = Router({**spec, "threshold": 0.5})
    scores = np.array([router.score(f) for f in feats])
    x = np.array([[f[k] for k in LOGISTIC_FEATURES] for f in feats])
    z = (x - x.mean(0)) / x.std(0)
    ref = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000).fit(z, good.astype(int))
    assert scores == pytest.approx(ref.predict_proba(z)[:, 1], abs=1e-6)
    oracle = apgr(curve(student, student, teacher))  # failures first: the best any router can do
    assert apgr(curve(scores, student, teacher)) > oracle - 0.02
    with pytest.raises(ValueError, match="at least"):
        fit_logistic(feats[:20], np.ones(20), np.ones(20))  # no failures to learn from


def test_router_signals_and_bad_spec():
    f = features([(-0.2, 0.4), (-1.0, 2.0)])
    assert Router({"signal": "mean_logprob", "threshold": -0.5}).score(f) == pytest.approx(-0.6)
    assert Router({"signal": "neg_max_entropy", "threshold": 0}).score(f) == pytest.approx(-2.0)
    r = Router({"signal": "p10", "threshold": 0.5})
    assert r.to_teacher(0.4) and not r.to_teacher(0.5)
    with pytest.raises(ValueError, match="unknown routing signal"):
        Router({"signal": "vibes", "threshold": 0})


def test_decode_confidence_matches_teacher_forced_float64(tiny_student_dir):
    """Greedy decode records (logprob of the chosen token, entropy) per step; a float64 forward pass over
    prompt + answer gives the same numbers."""
    from potstill.chat import encode_prompt
    from potstill.serve.decode import Row, generate_rows
    from potstill.teachers.hf import LocalGenerator

    gen = LocalGenerator(tiny_student_dir)
    prompts = [encode_prompt(gen.tokenizer, [{"role": "user", "content": q}]) for q in ("What is two plus two?", "Hi")]
    rows = [Row(prompt=p, max_tokens=6, confidence=True) for p in prompts]
    generate_rows(gen.model, gen.tokenizer, gen.eos_ids, rows, gen.device)
    model64 = gen.model.double()
    try:
        for row in rows:
            steps = row.kept_steps()
            assert len(steps) == len(row.token_ids()) > 0
            ids = torch.tensor([row.prompt + row.token_ids()])
            with torch.no_grad():
                lp = torch.log_softmax(model64(ids).logits[0].double(), -1)[len(row.prompt) - 1 : -1]
            want_lp = lp.gather(1, ids[0, len(row.prompt) :, None])[:, 0]
            want_ent = -(lp.exp() * lp).sum(-1)
            assert [s[0] for s in steps] == pytest.approx(want_lp.tolist(), abs=1e-4)
            assert [s[1] for s in steps] == pytest.approx(want_ent.tolist(), abs=1e-4)
            assert all(math.isfinite(s[1]) for s in steps)
    finally:
        gen.model.float()
