"""benchmarks/ablation.py: KD - SFT pooled over seeds (per prompt the mean over seeds, one paired bootstrap)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "ablation", Path(__file__).resolve().parents[1] / "benchmarks" / "ablation.py"
)
ablation = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(ablation)


def _write(root: Path, seed: int, model: str, scores: dict[str, float], split: str = "ood") -> None:
    d = root / f"v-s{seed}" / "eval" / "answers"
    d.mkdir(parents=True, exist_ok=True)
    rows = [json.dumps({"id": i, "text": "x", "score": s}) for i, s in scores.items()]
    (d / f"{model}__{split}.jsonl").write_text("\n".join(rows) + "\n")


def test_pooled_difference_averages_the_seeds_per_prompt(tmp_path):
    ids = [f"q{i}" for i in range(40)]
    teacher = {i: 1.0 for i in ids}
    for seed, kd_right in ((0, 30), (1, 34)):  # KD right on 30 then 34 prompts, SFT on 28 then 28
        _write(tmp_path, seed, "teacher", teacher)
        _write(tmp_path, seed, "kd", {i: float(n < kd_right) for n, i in enumerate(ids)})
        _write(tmp_path, seed, "sft", {i: float(n < 28) for n, i in enumerate(ids)})
    got = ablation._pooled(tmp_path, "v", [0, 1], "ood")
    assert got["seeds"] == 2 and got["n"] == 40
    assert got["points"] == pytest.approx(100 * ((30 + 34) / 2 - 28) / 40)  # 11.25 points of teacher %
    lo, hi = got["ci95"]
    assert 0 < lo < got["points"] < hi  # every prompt that differs favours KD


def test_pooled_needs_the_same_prompts_in_every_seed(tmp_path):
    for seed, ids in ((0, ["a", "b"]), (1, ["a", "c"])):  # e.g. a random split drawn per seed
        for model in ("teacher", "kd", "sft"):
            _write(tmp_path, seed, model, {i: 1.0 for i in ids})
    assert ablation._pooled(tmp_path, "v", [0, 1], "ood") is None
    assert ablation._pooled(tmp_path, "v", [0, 1], "test") is None  # no score files for that split


def test_levels_order_parents_before_children():
    assert ablation.level("base") == 0 and ablation.level("expand") == 0
    assert ablation.level("expand+prune") == 1 and ablation.level("expand+prune+kdT") == 2
    for child, (parent, _) in ablation.SHARED.items():
        assert ablation.level(parent) < ablation.level(child)
