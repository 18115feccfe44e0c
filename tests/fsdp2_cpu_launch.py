"""Launched by tests/test_train_multiprocess.py under torchrun: the stage-2 recipe with accelerate's FSDP2 on CPU
processes (gloo), trained for 2 steps and then resumed from its step-1 checkpoint in the same launch.

accelerate only selects FSDP for accelerator devices (``cpu=True`` gives MULTI_CPU, i.e. DDP), although torch's
``fully_shard`` itself runs over gloo on CPU. So after accelerate has set up the process group this launcher
switches its state to FSDP2 with the plugin model/accelerate/fsdp.yaml describes; everything else is the real recipe.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fsdp2_cpu_launch.py CONFIG.yaml OUT.json
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import accelerate.state
import yaml
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

FSDP_YAML = Path(__file__).resolve().parents[1] / "model" / "accelerate" / "fsdp.yaml"


def fsdp_plugin_from_yaml(path: Path = FSDP_YAML) -> FullyShardedDataParallelPlugin:
    """The plugin `accelerate launch --config_file fsdp.yaml` would build (the keys that file sets)."""
    c = yaml.safe_load(path.read_text())["fsdp_config"]
    return FullyShardedDataParallelPlugin(
        fsdp_version=c["fsdp_version"], reshard_after_forward=c["fsdp_reshard_after_forward"],
        auto_wrap_policy=c["fsdp_auto_wrap_policy"].lower(),
        transformer_cls_names_to_wrap=c["fsdp_transformer_layer_cls_to_wrap"].split(","),
        state_dict_type=c["fsdp_state_dict_type"], cpu_offload=c["fsdp_offload_params"],
        cpu_ram_efficient_loading=c["fsdp_cpu_ram_efficient_loading"],
        activation_checkpointing=c["fsdp_activation_checkpointing"],
    )


_init = accelerate.state.AcceleratorState.__init__


def _fsdp2_on_cpu(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin_from_yaml()


def main(config: str, out: str) -> None:
    from torch.distributed.tensor import DTensor

    from model.train_config import TrainConfig
    from model.train_stage2 import Stage2Recipe

    accelerate.state.AcceleratorState.__init__ = _fsdp2_on_cpu
    cfg = TrainConfig.from_yaml(config)
    full = Stage2Recipe(cfg)
    full.setup()
    sharded = all(isinstance(p, DTensor) for p in full.params)
    accelerator = full.accelerator
    world, rank = accelerator.num_processes, accelerator.process_index
    full.train()
    step1 = Path(cfg.output_dir) / "checkpoints" / "step-00000001"
    resumed_dir = Path(cfg.output_dir + "-resumed")
    if rank == 0:
        shutil.copytree(step1, resumed_dir / "checkpoints" / step1.name)
    accelerator.wait_for_everyone()
    # No cleanup() between the runs: it ends the process group, and re-creating it in the same processes races.
    # The resumed run's Accelerator shares the same accelerate state (FSDP2 plugin, process group).
    again = Stage2Recipe(TrainConfig.from_dict({**cfg.to_dict(), "output_dir": str(resumed_dir), "resume": "latest"}))
    result = again.run()
    if rank == 0:
        Path(out).write_text(json.dumps({"world": world, "sharded": sharded, "full": full.history,
                                         "resumed": result.history, "resumed_start": result.start_step}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
