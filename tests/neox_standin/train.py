"""Stand-in for GPT-NeoX v1.0's train.py (tests only): one training rank.

Takes its rank as v1.0's NeoXArgs.configure_distributed_args does (deepspeed_slurm: from
SLURM_LOCALID/SLURM_PROCID/SLURM_NTASKS, which exist only in srun tasks; else RANK/LOCAL_RANK/
WORLD_SIZE), logs it, and on rank 0 saves the steps GPT-NeoX saves in (load step, exit-interval]
(checkpoint-factor multiples, extra-save-iters; step 0 when starting from scratch) as a real tiny
model in v1.0's layout, then writes ``latest``. ``STANDIN_TRAIN_SECONDS`` in the environment
makes every rank sleep first (a long-running segment for re-attach tests).
"""

import os
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import (  # noqa: E402
    get,
    log_call,
    padded_vocab,
    save_neox_checkpoint,
    save_steps,
    tiny_model,
)  # fmt: skip


def main() -> int:
    config = {}
    for path in sys.argv[1:]:
        config.update(yaml.safe_load(open(path)))
    if get(config, "deepspeed_slurm", False):
        os.environ["LOCAL_RANK"] = os.environ["SLURM_LOCALID"]  # KeyError outside srun, as v1.0
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    log_call(
        "train.py", rank=rank, world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", "0"))
    )
    time.sleep(float(os.environ.get("STANDIN_TRAIN_SECONDS", "0")))
    if rank != 0:
        return 0
    save = Path(get(config, "save"))
    start = 0
    if get(config, "load"):
        start = int((Path(get(config, "load")) / "latest").read_text().removeprefix("global_step"))
    steps = save_steps(config, start, get(config, "exit-interval"))
    vocab = padded_vocab(config)
    for step in steps:
        save_neox_checkpoint(
            tiny_model(config, vocab, step), config, save / f"global_step{step}", step,
            data_parallel=world // get(config, "model-parallel-size", 1),
        )  # fmt: skip
        (save / "latest").write_text(f"global_step{step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
