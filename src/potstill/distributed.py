"""Multi-process training (``accelerate launch`` / ``torchrun``): who the main process is, and the
few places where the ranks must coordinate. There is no training loop here: the processes come from
the launcher, and the transformers Trainer (through accelerate) shards the batches and syncs gradients.

The rule: every rank runs the Trainer of a ``students/*`` stage; only the main process (global rank
0) writes the run directory (stage folders, provenance, ``training.json``, the exported model and
its card, ``config.yaml``). Under a multi-process launch the other stages are not run at all: they
must be up to date already (``potstill prompts`` / ``generate`` / ``capture`` single-process first),
see :meth:`potstill.run_dir.RunDir.run`.

A process is part of a multi-process launch when ``WORLD_SIZE`` > 1 (set by both launchers; its
rank is ``RANK``); a plain ``potstill`` process never touches ``torch.distributed``.

Sharded training (FSDP, DeepSpeed ZeRO-3) needs two more things, both here:
:func:`prepare_teacher` (the live teacher wrapped for inference only, never DDP) and
:func:`gather_full_state_dict` (every rank takes part in gathering the weights for the export).
"""

from __future__ import annotations

import copy
import os
from datetime import timedelta

BARRIER_TIMEOUT_S = 1800  # TrainingArguments.ddp_timeout's default


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def launched() -> bool:
    """Whether this process is one of several started by ``accelerate launch`` / ``torchrun``."""
    return _env_int("WORLD_SIZE", 1) > 1


def world_size() -> int:
    """Processes in this launch (``WORLD_SIZE``; 1 without a launcher)."""
    return max(_env_int("WORLD_SIZE", 1), 1)


def rank() -> int:
    """This process's global rank (``RANK``; 0 without a launcher)."""
    return _env_int("RANK", 0) if launched() else 0


def is_main_process() -> bool:
    """True for global rank 0, and for any process outside a multi-process launch. Read from the
    launcher's environment (the same numbers accelerate's ``PartialState`` reports), so asking
    does not start the process group."""
    return rank() == 0


def state():
    """accelerate's ``PartialState`` (starts the process group on first use under a launcher; the
    Trainer later reuses it)."""
    from accelerate import PartialState  # defers accelerate
    from accelerate.utils import str_to_bool  # defers accelerate

    cpu = bool(str_to_bool(os.environ.get("ACCELERATE_USE_CPU", "false")))
    return PartialState(cpu=cpu, timeout=timedelta(seconds=BARRIER_TIMEOUT_S))


def wait_for_everyone() -> None:
    """A barrier across the launch's processes (a no-op without a launcher)."""
    if launched():
        state().wait_for_everyone()


# -- sharded training (FSDP / DeepSpeed) -------------------------------------------------------


def sharded(accelerator) -> str | None:
    """``"fsdp"`` or ``"deepspeed"`` when the student's weights are sharded or partitioned across
    ranks (so they cannot be read outside its forward pass), else None (single process, DDP)."""
    from accelerate.utils import DistributedType  # defers accelerate

    if accelerator.distributed_type == DistributedType.FSDP:
        return "fsdp"
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return "deepspeed"
    return None


def prepare_teacher(teacher, accelerator):
    """The live teacher prepared for evaluation only: eval mode, no gradients, never wrapped in DDP.

    * single process / DDP: ``accelerator.prepare_model(teacher, evaluation_mode=True)`` (moved to
      this rank's device, mixed-precision autocast applied; no DDP wrapper, so no gradient sync);
    * FSDP2: sharded like the student (accelerate's ``fsdp2_prepare_model``: per transformer layer,
      weights broadcast from rank 0 when ``fsdp_cpu_ram_efficient_loading`` left the other ranks
      with empty ones), then frozen; its forward all-gathers one layer at a time;
    * DeepSpeed: a ``deepspeed.initialize`` inference engine with the run's DeepSpeed config, ZeRO-3
      partitioned when the student is (stage 3), else a full copy per rank (stage 0) — as TRL does
      for reference / teacher models.
    """
    teacher.eval()
    teacher.requires_grad_(False)
    kind = sharded(accelerator)
    if kind == "fsdp" and getattr(accelerator, "is_fsdp2", False):
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model  # defers accelerate

        plugin = accelerator.state.fsdp_plugin  # set_auto_wrap_policy resolves the layer classes onto the
        saved = (plugin.transformer_cls_names_to_wrap, plugin.auto_wrap_policy)  # plugin: keep the student's own
        try:
            teacher = fsdp2_prepare_model(accelerator, teacher)
        finally:
            plugin.transformer_cls_names_to_wrap, plugin.auto_wrap_policy = saved
    elif kind == "fsdp":
        raise RuntimeError("a live teacher under FSDP needs fsdp_version: 2 (configs/accelerate/fsdp2.yaml)")
    elif kind == "deepspeed":
        teacher = _deepspeed_inference(teacher, accelerator)
    else:
        teacher = accelerator.prepare_model(teacher, evaluation_mode=True)
    return teacher.eval()


def _deepspeed_inference(model, accelerator):

    import deepspeed  # defers deepspeed (optional)

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage") != 3:
        zero["stage"] = 0  # not partitioned: a plain replica per rank
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    for key in [k for k, v in zero.items() if v == "auto"]:  # filled for the student only at train time
        del zero[key]
    hidden = getattr(model.config, "hidden_size", None)
    if hidden and zero["stage"] == 3:
        zero.update(
            {
                "reduce_bucket_size": hidden * hidden,
                "stage3_param_persistence_threshold": 10 * hidden,
                "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            }
        )
    engine, *_ = deepspeed.initialize(model=model, config=config)
    return engine


def gather_full_state_dict(trainer) -> dict | None:
    """The trained student's full state dict gathered from its shards (FSDP / ZeRO-3); every rank must
    call this (it is a collective). None when the weights are not sharded: ``trainer.model`` holds them."""
    accelerator = trainer.accelerator
    if sharded(accelerator) is None:
        return None
    return accelerator.get_state_dict(trainer.model_wrapped)
