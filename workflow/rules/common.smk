# Helpers shared by the rules: the run matrix, paths, and resources derived from the config.
import re
import shlex

from pythia_suite import config as suite_config

suite_config.check_config(config, "config")

RESULTS = config["paths"]["results"]
STATE = config["paths"]["state"]
EFFECTIVE_CONFIG = f"{RESULTS}/config/effective.yaml"
RUNS = suite_config.expand_runs(config)
STEPS = suite_config.checkpoint_steps(config)
FINAL_STEP = STEPS[-1]
PREVIOUS_STEP = dict(zip(STEPS[1:], STEPS[:-1]))
RAW_SHARDS = [f"{i:02d}" for i in range(len(config["data"]["raw"]["shards"]))]
VARIANTS = sorted({run.variant for run in RUNS.values()})
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


onstart:
    # Every pythia-suite call reads the same merged, validated config as the workflow.
    suite_config.write_effective_config(config, EFFECTIVE_CONFIG)


def run_of(wildcards):
    return RUNS[wildcards.run]


# ----------------------------------------------------------------------------- data


def corpus_shards(variant):
    return expand(f"{RESULTS}/data/corpus/{variant}/{{shard}}.jsonl.zst", shard=RAW_SHARDS)


def tokenized_prefix(variant, shard):
    return f"{RESULTS}/data/tokenized/{variant}/{shard}_text_document"


def dataset_prefix(variant):
    return f"{RESULTS}/data/datasets/{variant}/{variant}_text_document"


def order_dir(variant, data_seed):
    return f"{RESULTS}/data/order/{variant}/seed{data_seed}"


def preshuffled_prefix(variant):
    return f"{RESULTS}/data/preshuffled/{variant}/document"


def training_data(wildcards):
    """What a training segment reads: the dataset and its order, or the preshuffled set."""
    run = run_of(wildcards)
    if config["data"]["source"] == "preshuffled":
        return multiext(preshuffled_prefix(run.variant), ".bin", ".idx")
    return [
        *multiext(dataset_prefix(run.variant), ".bin", ".idx"),
        order_dir(run.variant, run.data_seed),
    ]


TOKENIZER = f"{RESULTS}/data/tokenizer/tokenizer.json"


# ----------------------------------------------------------------------------- training


def checkpoint_dir(run, step):
    return f"{RESULTS}/runs/{run}/checkpoints/step{step}"


def previous_checkpoint(wildcards):
    step = int(wildcards.step)
    if step not in PREVIOUS_STEP:
        raise ValueError(f"step{step} is not a checkpoint step of the schedule (training.checkpoints)")
    return checkpoint_dir(wildcards.run, PREVIOUS_STEP[step])


def segment_group(wildcards):
    """The short early segments of a run share one allocation (a Snakemake group)."""
    if int(wildcards.step) <= config["training"]["early_group_max_step"]:
        return f"early_{wildcards.run}"
    return None


def train_layout(wildcards):
    run = run_of(wildcards)
    layout = config["sizes"][run.size]["cluster"]
    return layout, suite_config.world_size(config, run.size)


def train_nodes(wildcards):
    return train_layout(wildcards)[0]["nodes"]


def train_tasks(wildcards):
    return train_layout(wildcards)[1]


def train_gpus(wildcards):
    layout, _ = train_layout(wildcards)
    return layout["nodes"] * layout["gpus_per_node"]


def train_mem_mb(wildcards):
    layout, _ = train_layout(wildcards)
    per_node = max(layout["gpus_per_node"], 1) * config["cluster"]["mem_mb_per_gpu"]
    return per_node


def train_mpi(wildcards):
    """The launcher of multi-rank segments; the plugin's `mpi` resource under SLURM."""
    launcher = config["cluster"]["launcher"]
    if launcher == "srun" and train_tasks(wildcards) > 1:
        return "srun"
    return ""


def train_launch(wildcards):
    """Command prefix that starts one process per rank (empty for a single process)."""
    tasks = train_tasks(wildcards)
    launcher = config["cluster"]["launcher"]
    if tasks == 1 or launcher == "none":
        return ""
    if launcher == "torchrun":
        return f"torchrun --standalone --nproc-per-node {tasks}"
    nodes = train_nodes(wildcards)
    cpus = config["cluster"]["cpus_per_task"]
    return f"srun --nodes {nodes} --ntasks {tasks} --cpus-per-task {cpus} --kill-on-bad-exit=1"


# ----------------------------------------------------------------------------- export, publish, eval


def export_dir(run, step):
    return f"{RESULTS}/runs/{run}/exports/step{step}"


def receipt(run, step):
    return f"{RESULTS}/runs/{run}/published/step{step}.json"


SHOTS = {"zero": 0, "five": 5}
EVAL_BATCHES = {shots: suite_config.eval_batches(config, n) for shots, n in SHOTS.items()}


def eval_batch_exports(wildcards):
    steps = EVAL_BATCHES[wildcards.shots][int(wildcards.batch)]
    return [export_dir(wildcards.run, step) for step in steps]


def eval_batch_outputs(run):
    return [
        f"{RESULTS}/runs/{run}/evals/{shots}-shot/batch{i:03d}"
        for shots, batches in EVAL_BATCHES.items()
        for i in range(len(batches))
    ]


def eval_tasks_input(wildcards):
    if config["evaluation"]["local_tasks"]:
        return f"{RESULTS}/data/eval_tasks"
    return []


# ----------------------------------------------------------------------------- targets


def run_targets(run):
    """Everything one run produces: every step trained, exported and published; its evals."""
    return [
        *(receipt(run, step) for step in STEPS),
        f"{RESULTS}/evals/{run}",
        f"{RESULTS}/runs/{run}/model_card/README.md",
    ]


def all_targets():
    return [f"{RESULTS}/runs/{run}/run.done" for run in RUNS] + [f"{RESULTS}/report"]
