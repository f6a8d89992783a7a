"""GPT-NeoX v1.0 backend: Pythia's own trainer, launched on SLURM, one checkpoint segment a job.

The faithful GPU path. GPT-NeoX v1.0 (tag ``v1.0``, commit ``71df4d5017f9``) with EleutherAI's
DeeperSpeed (tag ``v1.0``) is installed from ``envs/gpt-neox.yaml`` (its post-deploy script
clones GPT-NeoX, installs DeeperSpeed and builds the fused kernels) and checked out at
``training.neox.dir``; this package writes GPT-NeoX's inputs, runs its two entry points, and
turns what they write into a checkpoint the rest of the workflow accepts.

One segment job starts exactly one ``python deepy.py train.py SEGMENT.json`` (the rule adds no
launch prefix under this backend; see ``workflow/rules/common.smk``). What deepy.py then does
depends on the hosts in the hostfile (``DLTS_HOSTFILE``, lines ``host slots=N``), as in
DeeperSpeed v1.0's ``deepspeed/launcher/runner.py``:

- several hosts: the SLURM runner calls ``srun -n <all slots> --export=ALL python -u train.py``
  inside the allocation, and each task takes RANK/LOCAL_RANK/WORLD_SIZE from
  SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS (``deepspeed_slurm: true``);
- one host: the runner is meant to start the slots itself (``deepspeed.launcher.launch``),
  which sets RANK/LOCAL_RANK/WORLD_SIZE; no srun task exists, so ``deepspeed_slurm`` must be
  false there (with it GPT-NeoX would read SLURM_LOCALID, which no process has). The segment
  config says so. DeeperSpeed v1.0's runner fails on this branch (``runner.exports`` unbound,
  runner.py line 375), so ``check_neox_supported`` refuses one-node GPU layouts; the branch
  serves the CPU test layouts with the stand-in GPT-NeoX.

A *slot* is a GPU (``gpus_per_node``) or, on CPU-only nodes such as the local test cluster,
one of ``cluster.cpu_ranks_per_node`` ranks: one training rank per slot either way
(``slots_per_node``).

A segment ``(a, b]`` loads ``global_step{a}`` and stops after saving ``global_step{b}``. It keeps
the run's ``train-iters`` and stops with ``exit-interval: b`` instead of setting ``train-iters:
b``: GPT-NeoX derives the number of training samples from ``train-iters``, so a shorter value
builds different index maps (for the deduped Pile, a different number of epochs and so a
different data order) and a different warmup/decay unless ``lr-decay-iters`` is pinned. The
exit check runs after the checkpoint save, so ``b`` is written before the process exits.

Conversion: ``python tools/convert_to_hf.py --input_dir SAVE/global_stepN --config_file CFG
--output_dir DIR`` (v1.0's name; later GPT-NeoX has ``tools/ckpts/convert_neox_to_hf.py``).

Its modules, one concern each:

- ``config``: GPT-NeoX configs from the suite's config (the run's, each segment's), what the
  neox path supports; the one module of this package that reads the suite's config keys;
- ``launch``: hostfiles (node lists from ``pythia_suite.slurm``), ``deepy.py``'s command, running
  one segment;
- ``index_maps``: the data prefix and index maps GPT-NeoX reads (rule ``neox_index_maps``);
- ``convert``: a finished GPT-NeoX save, its conversion to Hugging Face and to the workflow's
  checkpoint;
- ``segment``: ``train_segment_neox``, a segment job start to finish, and its summary;
- ``doctor``: ``neox-doctor``, whether GPT-NeoX v1.0 can launch here.

Importing this package does not import torch: configs and commands can be built on a login node.
"""


class NeoXError(RuntimeError):
    """GPT-NeoX could not be prepared or failed; the message names the file, key or command."""
