"""The shipped accelerate configs (configs/accelerate/) load and pass `accelerate launch`'s validation.

Each YAML is read by accelerate's own config loader, then goes through what ``accelerate launch
--config_file X -m potstill.cli.main train CONFIG`` does before it starts any process: argument
parsing, merging the file into the arguments (``_validate_launch_command``), and building the
launched processes' environment (``prepare_multi_gpu_env`` / ``prepare_deepspeed_cmd_env``). The
FSDP and DeepSpeed plugins are then built from that environment, as each process does, so their
own checks run too. Nothing is launched and no GPU is needed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
LAUNCH = ["-m", "potstill.cli.main", "train", "run.yaml"]


def launch_args(name: str):
    """``accelerate launch --config_file NAME.yaml -m potstill.cli.main train run.yaml``, validated."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(
        ["--config_file", str(CONFIGS / f"{name}.yaml"), "--main_process_port", "0", *LAUNCH]
    )
    args, defaults, _ = _validate_launch_command(args)
    assert (
        args.module
        and args.training_script == "potstill.cli.main"
        and args.training_script_args == ["train", "run.yaml"]
    )
    return args, defaults


def launched_env(args, defaults) -> dict[str, str]:
    """The accelerate variables the launcher would give each process."""
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


@pytest.mark.parametrize("name", ["ddp", "fsdp2", "deepspeed_zero3"])
def test_config_loads_with_accelerates_loader(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import ComputeEnvironment, DistributedType

    cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert isinstance(cfg, ClusterConfig) and cfg.compute_environment == ComputeEnvironment.LOCAL_MACHINE
    assert (
        cfg.distributed_type
        == {
            "ddp": DistributedType.MULTI_GPU,
            "fsdp2": DistributedType.FSDP,
            "deepspeed_zero3": DistributedType.DEEPSPEED,
        }[name]
    )
    assert cfg.num_processes > 1 and cfg.num_machines == 1 and not cfg.use_cpu
    assert cfg.mixed_precision == "no"  # precision is the run config's train.bf16 (hashed with the stage)
    if name == "fsdp2":
        assert cfg.fsdp_config["fsdp_version"] == 2 and cfg.fsdp_config["fsdp_reshard_after_forward"] is True
        assert cfg.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert cfg.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
        assert cfg.fsdp_config["fsdp_cpu_ram_efficient_loading"] is True
    if name == "deepspeed_zero3":
        assert cfg.deepspeed_config["zero_stage"] == 3 and cfg.deepspeed_config["zero3_save_16bit_model"] is True


def test_ddp_config_launches_ddp():
    args, defaults = launch_args("ddp")
    assert args.multi_gpu and not (args.use_fsdp or args.use_deepspeed or args.cpu)
    env = launched_env(args, defaults)
    assert args.nproc_per_node == str(defaults.num_processes) and env["ACCELERATE_MIXED_PRECISION"] == "no"
    assert "ACCELERATE_USE_FSDP" not in env and "ACCELERATE_USE_DEEPSPEED" not in env


def test_fsdp2_config_builds_an_fsdp2_full_shard_plugin():
    from accelerate.utils import FullyShardedDataParallelPlugin, patch_environment
    from torch.distributed.fsdp import StateDictType
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    args, defaults = launch_args("fsdp2")
    assert args.use_fsdp and not (args.multi_gpu or args.use_deepspeed)
    env = launched_env(args, defaults)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    with patch_environment(**env):
        plugin = FullyShardedDataParallelPlugin()  # what each process builds from the environment
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # full shard
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert plugin.transformer_cls_names_to_wrap is None  # each model's own _no_split_modules (teacher and student)
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT and plugin.cpu_ram_efficient_loading
    assert plugin.activation_checkpointing is False  # train.gradient_checkpointing together with it is an error


def test_deepspeed_zero3_config_builds_a_zero3_plugin():
    from accelerate.utils import DeepSpeedPlugin, patch_environment

    args, defaults = launch_args("deepspeed_zero3")
    assert args.use_deepspeed and not (args.multi_gpu or args.use_fsdp)
    env = launched_env(args, defaults)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    with patch_environment(**env):
        plugin = DeepSpeedPlugin()
    ds = plugin.deepspeed_config
    assert plugin.zero_stage == 3 and plugin.zero3_init_flag is True
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # the export needs it
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
    # batch, accumulation and clipping are left to the Trainer (filled from the run config)
    assert (
        ds["train_micro_batch_size_per_gpu"] == ds["gradient_accumulation_steps"] == ds["gradient_clipping"] == "auto"
    )


@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="the deepspeed package is not installed (only needed on GPU machines: pip install deepspeed); "
    "the accelerate-side validation above still ran",
)
def test_deepspeed_accepts_the_zero3_section():
    from accelerate.utils import DeepSpeedPlugin, patch_environment
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    args, defaults = launch_args("deepspeed_zero3")
    with patch_environment(**launched_env(args, defaults)):
        zero = DeepSpeedPlugin().deepspeed_config["zero_optimization"]
    parsed = DeepSpeedZeroConfig(**zero)
    assert int(parsed.stage) == 3 and parsed.gather_16bit_weights_on_model_save


def test_readme_documents_each_config():
    text = (CONFIGS / "README.md").read_text()
    for name in ("ddp", "fsdp2", "deepspeed_zero3"):
        assert f"accelerate launch --config_file configs/accelerate/{name}.yaml -m potstill.cli.main train" in text
