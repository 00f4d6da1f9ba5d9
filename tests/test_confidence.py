"""Teacher confidence from the recorded top-k log-probs, and its report warning."""

import math

import pytest

from potstill.evaluate.confidence import confidence_by_origin, confidence_warning, prompt_origins, teacher_confidence


def row(*positions):
    return {"top_logprobs": [[[i, math.log(p)] for i, p in enumerate(ps)] for ps in positions]}


def test_confidence_figures_by_hand():
    conf = teacher_confidence([row([0.995, 0.005], [0.6, 0.4]), row([0.999, 0.001]), {"top_logprobs": None}])
    assert conf["tokens"] == 3 and conf["top_k"] == 2
    assert conf["share_top1_over_0_99"] == pytest.approx(2 / 3, abs=1e-6)
    assert conf["mean_top1_prob"] == pytest.approx((0.995 + 0.6 + 0.999) / 3, abs=1e-6)
    ent = [-(a * math.log(a) + b * math.log(b)) for a, b in ((0.995, 0.005), (0.6, 0.4), (0.999, 0.001))]
    assert conf["mean_topk_entropy_nats"] == pytest.approx(sum(ent) / 3, abs=1e-6)
    assert teacher_confidence([{"top_logprobs": None}]) is None


def test_warning_only_for_an_over_confident_teacher():
    sure = teacher_confidence([row(*[[0.999, 0.001]] * 19, [0.5, 0.5])])
    warned = confidence_warning(sure, 1.0)
    assert warned["kind"] == "teacher_confidence" and "95.0% of 20 answer tokens" in warned["message"]
    assert confidence_warning(teacher_confidence([row([0.999, 0.001], [0.5, 0.5])]), 1.0) is None
    assert confidence_warning(None, 1.0) is None


def test_confidence_by_origin_splits_the_figures_per_expand_method():
    gens = [
        {"id": "a", **row([0.999, 0.001])},
        {"id": "typo-1", **row([0.6, 0.4], [0.95, 0.05])},
        {"id": "b", **row([0.995, 0.005])},
        {"id": "wrap-1", "top_logprobs": None},
    ]
    train = [
        {"id": "a", "meta": {}},
        {"id": "b"},
        {"id": "typo-1", "meta": {"synthetic": True, "method": "typo"}},
        {"id": "wrap-1", "meta": {"synthetic": True, "method": "wrap"}},
    ]
    origins = prompt_origins(train)
    assert origins == {"typo-1": "typo", "wrap-1": "wrap"}
    by = confidence_by_origin(gens, origins)
    assert list(by) == ["original", "typo"]  # wrap recorded no top-k
    assert by["original"]["tokens"] == 2 and by["original"]["share_top1_over_0_99"] == 1.0
    assert by["typo"]["tokens"] == 2 and by["typo"]["share_top1_under_0_9"] == pytest.approx(0.5)
    assert by["typo"]["mean_mass_below_top1"] == pytest.approx(1 - (0.6 + 0.95) / 2, abs=1e-6)
    assert by["typo"] == teacher_confidence([gens[1]])
