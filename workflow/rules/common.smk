# Helpers shared by the rules: the run matrix, paths (pythia_suite.paths) and resources
# derived from the config.
import inspect
import os
import re
import shlex
import sys

from snakemake.common import overwrite_function_params

from pythia_suite import config as suite_config
from pythia_suite import costs as suite_costs
from pythia_suite import paths
from pythia_suite import notify as suite_notify
from pythia_suite.data import idxmaps as suite_idxmaps
from pythia_suite.data import source as suite_source
from pythia_suite.neox import config as suite_neox

RESULTS = config["paths"]["results"]
STATE = config["paths"]["state"]
EFFECTIVE_CONFIG = f"{RESULTS}/{suite_config.EFFECTIVE_CONFIG}"
RUNS = suite_config.expand_runs(config)
STEPS = suite_config.checkpoint_steps(config)
PREVIOUS_STEP = dict(zip(STEPS[1:], STEPS[:-1]))
RAW_SHARDS = [f"{i:02d}" for i in range(len(config["data"]["raw"]["shards"]))]
BAND_GROUPS = [f"{i:03d}" for i in range(config["data"]["dedup"]["band_groups"])]
RUN_CONFIG_HASH = {name: suite_config.run_config_hash(config, run) for name, run in RUNS.items()}
TOKENIZER = paths.tokenizer(RESULTS)
SHOTS = {"zero": 0, "five": 5}
EVAL_BATCHES = {shots: suite_config.eval_batches(config, n) for shots, n in SHOTS.items()}
CLI = f"pythia-suite --config {shlex.quote(EFFECTIVE_CONFIG)}"


# Wildcards match only names the config defines, so no target can reach outside RESULTS.
wildcard_constraints:
    run="|".join(re.escape(name) for name in RUNS),
    variant="|".join(re.escape(name) for name in config["variants"]),
    step=r"0|[1-9][0-9]*",
    shard=r"[0-9]{2}",
    shots=r"zero|five",
    batch=r"[0-9]{3}",
    seed=r"[0-9]+",
    band=r"[0-9]{3}",
    idxmaps_file=r"[A-Za-z0-9_.-]+\.(bin|idx)",


onstart:
    # Refuse a layout that cannot fit GPU memory before anything is queued: the cached memory
    # plan (results/plan/memory-<hash>.json, traced once per config; CPU layouts exempt).
    # onstart runs once per invocation, not in dry runs and not in the jobs' re-parses.
    from pythia_suite.train import memory_plan as train_memory

    try:
        train_memory.check_memory_plan(config, log=print)
    except train_memory.MemoryDoesNotFitError as err:
        sys.exit(f"pythia-suite: error: {err}")  # the message alone: no traceback follows it
    # Every pythia-suite call reads the same merged, validated config as the workflow.
    suite_config.write_effective_config(config, EFFECTIVE_CONFIG)
    # The plan's prediction, recorded once (never overwritten by later starts): `status`
    # compares what the segments measure against it.
    suite_costs.record_plan(config)


onerror:
    # Mail and/or a webhook when config.notify asks for them (nothing by default).
    suite_notify.on_error(config, log)


def log(*parts):
    return paths.log(RESULTS, *parts)


def per_job(func):
    """Mark `func` as a function Snakemake calls for every job (input, params, resources, group).

    Snakemake reads the signature of such a function (inspect.signature) at every call. Its own
    wrappers record the signature on the function once (snakemake.common.
    overwrite_function_params); so does this: 56,000 fewer of the 131,000 signature reads in
    the full suite's dry run (benchmarks/dryrun.py; the rest are Snakemake's resource
    wrappers). What the function returns, and when it is called, do not change."""
    overwrite_function_params(func, inspect.signature(func).parameters)
    return func


# ----------------------------------------------------------------------------- data


def corpus_shards(variant):
    return [paths.corpus_shard(RESULTS, variant, shard) for shard in RAW_SHARDS]


@per_job
def training_data(wildcards):
    """What a training segment reads (pythia_suite.data.source): the dataset and its order,
    or the preshuffled set."""
    return suite_source.training_data(config, RUNS[wildcards.run]).workflow_inputs()


def idxmaps_files(variant):
    """The fetched files of a variant's pre-tokenized Pile: its shards in order, then the .idx."""
    entry = suite_source.idxmaps_entry(config, variant)
    return [paths.idxmaps_file(RESULTS, variant, name) for name in suite_idxmaps.shard_names(entry)]


def standard_document_table(variant):
    """The deduped table joins the standard one when the suite has standard runs."""
    if config["variants"][variant]["dedup"] and any(not r.dedup for r in RUNS.values()):
        return paths.document_table(RESULTS, "standard")
    return []


def lens_documents(variant):
    """Subset labels for the lens: the document table (raw source only)."""
    return paths.document_table(RESULTS, variant) if config["data"]["source"] == "raw" else []


@per_job
def run_lens(wildcards):
    """A run's data lens; none under preshuffled (no document identity)."""
    if config["data"]["source"] == "preshuffled":
        return []
    run = RUNS[wildcards.run]
    return paths.lens_dir(RESULTS, run.variant, run.data_seed)


def lens_targets():
    """The lens of every (variant, data seed) order of the suite."""
    if config["data"]["source"] == "preshuffled":
        return []
    orders = sorted({(run.variant, run.data_seed) for run in RUNS.values()})
    return [paths.lens_dir(RESULTS, variant, seed) for variant, seed in orders]


# ----------------------------------------------------------------------------- training


@per_job
def previous_checkpoint(wildcards):
    step = int(wildcards.step)
    if step not in PREVIOUS_STEP:
        raise ValueError(f"step{step} is not a checkpoint step (training.checkpoints)")
    return paths.checkpoint_dir(RESULTS, wildcards.run, PREVIOUS_STEP[step])


@per_job
def run_config_hash(wildcards):
    """The hash of what determines a run's weights (a param: a changed config reruns it)."""
    return RUN_CONFIG_HASH[wildcards.run]


@per_job
def segment_group(wildcards):
    """The short early segments of a run share one allocation (a Snakemake group)."""
    return suite_config.segment_group(config, wildcards.run, int(wildcards.step))


def cluster_layout(wildcards):
    return config["sizes"][RUNS[wildcards.run].size]["cluster"]


@per_job
def train_nodes(wildcards):
    return cluster_layout(wildcards)["nodes"]


@per_job
def train_tasks(wildcards):
    return suite_config.devices(config, RUNS[wildcards.run].size)


@per_job
def train_gpus(wildcards):
    layout_ = cluster_layout(wildcards)
    return layout_["nodes"] * layout_["gpus_per_node"]


@per_job
def train_mem_mb(wildcards, attempt):
    """Memory per node: mem_mb_per_gpu for each GPU (or CPU rank) of a node, times the attempt:
    a segment killed for memory (OOM killer, SLURM OUT_OF_MEMORY) is retried (`retries`) with
    more, and resumes from its newest snapshot (docs/failures.md)."""
    ranks = suite_config.ranks_per_node(config, RUNS[wildcards.run].size)
    return attempt * ranks * config["cluster"]["mem_mb_per_gpu"]


def launcher():
    """How multi-rank segments start: cluster.launcher, where `auto` means srun under SLURM.

    Under SLURM the rule's command is run by a Snakemake nested inside the job (the jobstep
    plugin starts one with the local executor), which re-evaluates this: it must answer as
    the submitting Snakemake did, or the command runs without srun (one rank) and the changed
    `params.launch` makes the nested Snakemake rerun (delete) finished upstream segments.
    Inside a job SLURM_JOB_ID survives the jobstep plugin's environment cleaning.
    """
    chosen = config["cluster"]["launcher"]
    if chosen != "auto":
        return chosen
    plugin = workflow.executor_plugin
    under_slurm = plugin is not None and plugin.name.startswith("slurm")
    return "srun" if under_slurm or "SLURM_JOB_ID" in os.environ else "none"


def neox_backend():
    """GPT-NeoX trains (training.backend: neox): its deepy.py starts the ranks itself."""
    return config["training"]["backend"] == "neox"


if neox_backend():
    # Refuse what GPT-NeoX v1.0 cannot run before anything is queued (docs/slurm.md's table).
    suite_neox.check_neox_supported(config, RUNS.values())


@per_job
def neox_index_maps(wildcards):
    """Under GPT-NeoX, the run's data prefix and index maps (rule neox_index_maps, one per
    dataset and data seed, shared by the runs that read them). The training rules name this
    input only under GPT-NeoX: otherwise there is nothing to call for each segment."""
    run = RUNS[wildcards.run]
    return suite_neox.neox_index_maps_dir(config, run.variant, run.data_seed)


@per_job
def neox_index_maps_data(wildcards):
    """What the neox_index_maps job reads: what a run of that dataset and seed trains on."""
    run = suite_neox.run_of_dataset(config, wildcards.variant, wildcards.seed)
    return suite_source.training_data(config, run).workflow_inputs()


@per_job
def train_mpi(wildcards):
    """The plugin's `mpi` resource: set for multi-rank segments under SLURM, so that the
    plugin does not wrap the command in its own `srun -n1` and the command (PyTorch: the srun
    prefix; GPT-NeoX: the one deepy.py's srun, or its local launcher on one node) starts the
    ranks across the allocation. The plugin refuses `mpi` with `tasks: 1`, so a one-rank
    segment runs under its `srun -n1`: one process either way."""
    if train_tasks(wildcards) > 1 and (neox_backend() or launcher() == "srun"):
        return "srun"
    return ""


@per_job
def train_tasks_per_gpu(wildcards):
    """One rank per GPU. Without it the plugin turns `tasks` into --ntasks-per-gpu=<tasks> on a
    GPU job (tasks x GPUs ranks); 0 drops the flag (CPU-only nodes)."""
    return 1 if train_gpus(wildcards) else 0


@per_job
def train_launch(wildcards):
    """Command prefix that starts one process per rank (empty for a single process, and under
    GPT-NeoX, whose one deepy.py per segment starts them: a prefix would nest launchers)."""
    tasks = train_tasks(wildcards)
    how = launcher()
    if tasks == 1 or how == "none" or neox_backend():
        return ""
    if how == "torchrun":
        return f"torchrun --standalone --nproc-per-node {tasks}"
    nodes = train_nodes(wildcards)
    cpus = config["cluster"]["cpus_per_task"]
    return f"srun --nodes {nodes} --ntasks {tasks} --cpus-per-task {cpus} --kill-on-bad-exit=1"


def init_checkpoint_resources():
    """Resources of the step0 job. Under GPT-NeoX it trains the first segment (GPT-NeoX saves
    step 0 on its way to the first checkpoint step), so it needs the segment's allocation; the
    PyTorch backend only initialises weights there."""
    if not neox_backend():
        return {"runtime": 30}
    return {
        "nodes": train_nodes,
        "tasks": train_tasks,
        "gpu": train_gpus,
        "tasks_per_gpu": train_tasks_per_gpu,
        "mpi": train_mpi,
        "mem_mb": train_mem_mb,
        "cpus_per_task": config["cluster"]["cpus_per_task"],
        "runtime": config["cluster"]["minutes_per_segment"],
    }


# ----------------------------------------------------------------------------- evaluation


@per_job
def eval_batch_exports(wildcards):
    steps = EVAL_BATCHES[wildcards.shots][int(wildcards.batch)]
    return [paths.export_dir(RESULTS, wildcards.run, step) for step in steps]


@per_job
def eval_batch_dirs(wildcards):
    return [
        paths.eval_batch_dir(RESULTS, wildcards.run, shots, f"{i:03d}")
        for shots, batches in EVAL_BATCHES.items()
        for i in range(len(batches))
    ]


@per_job
def eval_tasks_input(wildcards):
    """Local tasks are built from held-out text; lm-eval's own are prefetched (login node)."""
    if config["evaluation"]["local_tasks"]:
        return paths.eval_tasks_dir(RESULTS)
    return paths.eval_datasets_marker(RESULTS)


# ----------------------------------------------------------------------------- targets


@per_job
def card_dedup_report(wildcards):
    """The dedup report a deduplicated run's card states its removed counts from (raw data)."""
    if config["data"]["source"] == "raw" and RUNS[wildcards.run].dedup:
        return paths.dedup_report(RESULTS)
    return []


@per_job
def run_receipts(wildcards):
    """Every step's publish receipt of one run."""
    return [paths.receipt(RESULTS, wildcards.run, step) for step in STEPS]


@per_job
def run_targets(wildcards):
    """Everything one run produces: every step trained, exported and published; its evals."""
    run = wildcards.run
    return [
        *run_receipts(wildcards),
        paths.evals_dir(RESULTS, run),
        paths.model_card(RESULTS, run),
    ]


def all_targets():
    targets = [paths.run_done(RESULTS, run) for run in RUNS] + [paths.report_dir(RESULTS)]
    targets += lens_targets()
    if config["data"]["source"] == "raw" and any(run.dedup for run in RUNS.values()):
        targets.append(paths.dedup_report(RESULTS))
    return targets
