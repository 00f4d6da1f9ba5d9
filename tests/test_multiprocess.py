"""`potstill train` in 2 CPU processes (torchrun, gloo) equals 1 process with the same global batch.

The launcher is ``python -m torch.distributed.run`` — what ``accelerate launch`` runs for multi-GPU
(DDP, FSDP) configs; ``accelerate launch --cpu`` alone starts one process (multi-CPU needs mpirun),
so CPU CI uses torchrun directly. The Trainer (through accelerate) shards the batches and DDP
averages the gradients; nothing here or in potstill is a hand-written distributed loop.

Equal data per optimizer step: both runs shuffle with one seeded permutation (``data_seed``,
accelerate's seedable sampler); 2 processes with per-device batch 2 take batches ``0, 2, ...`` and
``1, 3, ...`` of size 2 of it, i.e. the same 4 examples per step as 1 process with batch 4. The 16
training pairs are a multiple of the global batch, so no process pads its last batch by wrapping
around. The loss is normalised by the response tokens of the whole global batch (counted across
processes), so the gradients are the same sum in a different order. AdamW hardly sees a constant
factor on the gradients, so the logged losses (not only the weights) are compared: they catch a
normalisation mistake, the weights catch other examples per step.

Tolerances: float32 sums over 2 x 2 sequences all-reduced vs over 4 sequences in one process differ
by rounding (~1e-7 relative); 4 AdamW steps at lr 1e-3 keep that far below ``rtol=1e-4, atol=1e-6``
on the weights (measured: ~1e-7) and 1e-5 on the logged losses; a data or normalisation mistake
(a missing factor of 2, other examples per step) is orders of magnitude above that.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from potstill import api
from potstill.io import read_json

WORDS = "plan price storage seat refund trial error export password invoice team api limit".split()
N_PAIRS, PER_DEVICE, PROCS = 16, 2, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def project(tmp_path, tiny_teacher_dir, tiny_student_dir, monkeypatch):
    """A tiny config whose prompts and generate stages are done (single process)."""
    with open(tmp_path / "train.jsonl", "w") as f:
        for i in range(N_PAIRS):
            a, b = WORDS[i % len(WORDS)], WORDS[(3 * i + 1) % len(WORDS)]
            f.write(json.dumps({"id": f"p{i}", "prompt": f"what is the {a} of {b} number {i}?"}) + "\n")
    cfg = {
        "name": "mp",
        "run_dir": "run",
        "seed": 0,
        "prompts": {"sources": [{"path": "train.jsonl"}], "test_fraction": 0.0, "validation": 0.0},
        "teacher": {"model": str(tiny_teacher_dir), "batch_size": 16, "max_new_tokens": 6},
        "student": {"model": str(tiny_student_dir), "init": "random"},
        "train": {
            "methods": ["sft", "kd"],
            "epochs": 1,
            "batch_size": PER_DEVICE,
            "lr": 1e-3,
            "logging_steps": 1,
            "save_steps": 100,
            "max_seq_len": 64,
            "warmup_ratio": 0.0,
            "kd": {"alpha": 0.5, "temperature": 2.0},
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # the in-process reference run trains on the CPU too
    api.prompts(tmp_path / "c.yaml")
    api.generate(tmp_path / "c.yaml")
    return tmp_path


def launch(project, *args, nproc=PROCS):
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "potstill.cli.main",
        *args,
    ]
    return subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=300, env=env)


def weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_two_processes_match_one_process_with_the_same_global_batch(project):
    single = project / "single"
    shutil.copytree(project / "run", single)  # the same prompts and generations for the reference

    proc = launch(project, "train", "c.yaml")
    assert proc.returncode == 0, proc.stderr[-4000:]
    # Only rank 0 wrote the run directory: one stage message per stage, no stray temporary folders.
    assert proc.stderr.count("▶ students/sft") == 1 and proc.stderr.count("▶ students/kd") == 1
    assert not [p for p in (project / "run" / "students").iterdir() if p.name.startswith(".")]

    api.train(project / "c.yaml", [f"run_dir={single.name}", f"train.batch_size={PER_DEVICE * PROCS}"])

    for method in ("sft", "kd"):
        two, one = project / "run" / "students" / method, single / "students" / method
        t2, t1 = read_json(two / "training.json"), read_json(one / "training.json")
        assert t2["steps"] == t1["steps"] == N_PAIRS // (PER_DEVICE * PROCS)
        assert [s for s, _ in t2["loss_curve"]] == [s for s, _ in t1["loss_curve"]] == [1, 2, 3, 4]
        torch.testing.assert_close(
            [x for _, x in t2["loss_curve"]], [x for _, x in t1["loss_curve"]], rtol=1e-5, atol=1e-6
        )
        assert t2["train_loss"] == pytest.approx(t1["train_loss"], rel=1e-5)
        for part, value in t1["final_parts"].items():  # ce / kd per token, summed over both processes
            assert t2["final_parts"][part] == pytest.approx(value, rel=1e-4), part
        w2, w1 = weights(two), weights(one)
        assert w2.keys() == w1.keys()
        for name in w1:
            torch.testing.assert_close(
                w2[name], w1[name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name, method=method: f"{method} {n}: {m}"
            )
        prov = read_json(two / "_provenance.json")
        assert prov["stage"] == f"students/{method}" and prov["inputs"]["train"]["batch_size"] == PER_DEVICE
    kd = read_json(project / "run" / "students" / "kd" / "training.json")
    assert kd["kd_path"] == "kd" and kd["final_parts"]["kd_per_token"] > 0  # the live teacher took part


def test_helper_ranks_write_nothing_and_run_only_training(tmp_path, monkeypatch):
    """The rank rules of RunDir.run, in-process: rank 1 of 2 trains (build gets no output folder) and
    writes no stage; any stage that is not up to date is a one-line error on every rank."""
    from potstill.errors import UserError
    from potstill.run_dir import RunDir

    calls = []

    def build(out, work):
        calls.append((out, work.is_dir()))
        if out is not None:
            (out / "x.txt").write_text("x")
        return {}

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    run_dir = RunDir(tmp_path / "run")
    run_dir.run("students/sft", {"a": 1}, build, all_ranks=True)
    assert calls == [(None, True)] and not run_dir.path("students/sft").exists()
    with pytest.raises(
        UserError,
        match=r"stage 'generate' is not up to date; a multi-process launch \(WORLD_SIZE=2\) "
        r"only trains",
    ):
        run_dir.run("generate", {"a": 1}, build)
    monkeypatch.setenv("RANK", "0")  # the main rank writes the stage and its provenance
    run_dir.run("students/sft", {"a": 1}, build, all_ranks=True)
    assert (run_dir.path("students/sft") / "x.txt").is_file() and run_dir.done_hash("students/sft")
    with pytest.raises(UserError, match="only trains"):
        run_dir.run("generate", {"a": 1}, build)
    monkeypatch.setenv("RANK", "1")  # a stage done already is skipped on every rank
    run_dir.run("students/sft", {"a": 1}, build, all_ranks=True)
    assert len(calls) == 2
    monkeypatch.setenv("WORLD_SIZE", "1")  # no launcher: everything runs as before
    run_dir.run("generate", {"a": 1}, build)
    assert (run_dir.path("generate") / "x.txt").is_file()


def test_distributed_helpers_read_the_launcher_environment(monkeypatch):
    from potstill import distributed

    for var in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)
    assert (distributed.launched(), distributed.world_size(), distributed.rank(), distributed.is_main_process()) == (
        False,
        1,
        0,
        True,
    )
    distributed.wait_for_everyone()  # a no-op without a launcher (no process group started)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert (distributed.launched(), distributed.world_size(), distributed.rank(), distributed.is_main_process()) == (
        True,
        4,
        3,
        False,
    )


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.config = type("C", (), {"hidden_size": 4})()


def test_prepare_teacher_single_process_is_eval_only():
    from accelerate import Accelerator

    from potstill.distributed import prepare_teacher, sharded

    acc = Accelerator(cpu=True)
    assert sharded(acc) is None
    teacher = prepare_teacher(_Net(), acc)
    assert isinstance(teacher, _Net) and not teacher.training  # no DDP wrapper
    assert not any(p.requires_grad for p in teacher.parameters())


def test_prepare_teacher_under_deepspeed_builds_an_inference_engine(monkeypatch):
    """The DeepSpeed branch, with a stand-in ``deepspeed`` module: the run's config without optimizer
    and scheduler, ZeRO-3 kept (partitioned teacher) or stage 0 (a plain replica) otherwise."""
    import types

    from accelerate.utils import DistributedType

    from potstill.distributed import prepare_teacher, sharded

    seen = []

    class Engine(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    fake = types.ModuleType("deepspeed")
    fake.initialize = lambda model, config: (seen.append(config), (Engine(model), None, None, None))[1]
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    for stage, want in ((3, 3), (2, 0)):
        ds = {
            "zero_optimization": {"stage": stage},
            "optimizer": {"type": "AdamW"},
            "scheduler": {},
            "bf16": {"enabled": True},
        }
        acc = types.SimpleNamespace(
            distributed_type=DistributedType.DEEPSPEED,
            state=types.SimpleNamespace(deepspeed_plugin=types.SimpleNamespace(deepspeed_config=ds)),
        )
        assert sharded(acc) == "deepspeed"
        engine = prepare_teacher(_Net(), acc)
        config = seen[-1]
        assert isinstance(engine, Engine) and not engine.module.training
        assert config["zero_optimization"]["stage"] == want and "optimizer" not in config and "scheduler" not in config
        assert (
            config["bf16"] == {"enabled": True} and ds["zero_optimization"]["stage"] == stage
        )  # the run's own untouched
        assert ("stage3_prefetch_bucket_size" in config["zero_optimization"]) == (want == 3)


def test_prepare_teacher_under_fsdp2_keeps_the_students_wrap_policy(monkeypatch):
    import types

    import accelerate.utils.fsdp_utils as fsdp_utils
    from accelerate.utils import DistributedType

    from potstill.distributed import prepare_teacher

    plugin = types.SimpleNamespace(transformer_cls_names_to_wrap=None, auto_wrap_policy="policy")

    def fake_prepare(accelerator, model):  # resolves the teacher's layer classes onto the shared plugin
        plugin.transformer_cls_names_to_wrap, plugin.auto_wrap_policy = ["TeacherLayer"], "partial(policy)"
        assert not any(p.requires_grad for p in model.parameters())  # frozen before sharding: no fp32 upcast
        return model

    monkeypatch.setattr(fsdp_utils, "fsdp2_prepare_model", fake_prepare)
    acc = types.SimpleNamespace(
        distributed_type=DistributedType.FSDP, is_fsdp2=True, state=types.SimpleNamespace(fsdp_plugin=plugin)
    )
    teacher = prepare_teacher(_Net(), acc)
    assert not teacher.training and (plugin.transformer_cls_names_to_wrap, plugin.auto_wrap_policy) == (None, "policy")
    acc.is_fsdp2 = False
    with pytest.raises(RuntimeError, match="fsdp_version: 2"):
        prepare_teacher(_Net(), acc)
