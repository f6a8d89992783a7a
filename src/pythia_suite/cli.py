"""`pythia-suite`: the one command every workflow rule calls; every step runnable by hand.

Each subcommand reads the same config as the workflow (`--config`, repeatable: overlays are
deep-merged in order) and imports only what it needs, since torch and transformers cost seconds
per process. Errors print one line naming the file, key or value, and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from pythia_suite import config as cfg
from pythia_suite.evaluate.collect import pythia_result_files

# ----------------------------------------------------------------------------- helpers


def _results(config: dict) -> str:
    return config["paths"]["results"]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _dedup(config: dict) -> dict:
    return config["data"]["dedup"]


# ----------------------------------------------------------------------------- suite commands
# Each command's help is its row in COMMANDS; what it does is the stage function it calls.


def cmd_runs(config: dict, args) -> None:
    for run in cfg.expand_runs(config).values():
        print(run.name)


def cmd_neox_config(config: dict, args) -> None:
    from pythia_suite.neox.config import neox_config_json

    sys.stdout.write(neox_config_json(config, cfg.get_run(config, args.run), args.dataset_prefix))


def cmd_neox_doctor(config: dict, args) -> None:
    from pythia_suite.neox.doctor import check_environment

    check_environment(config, args.neox_dir, args.python)


def cmd_neox_index_maps(config: dict, args) -> None:
    from pythia_suite.neox.config import run_of_dataset
    from pythia_suite.neox.index_maps import build_neox_index_maps

    run = run_of_dataset(config, args.variant, args.seed)
    print(build_neox_index_maps(config, run, args.output))


def cmd_hf_config(config: dict, args) -> None:
    from pythia_suite.train.settings import hf_config

    print(json.dumps(hf_config(config, cfg.get_run(config, args.run)), indent=2))


def cmd_plan(config: dict, args) -> None:
    from pythia_suite.costs import plan_command

    options = {"gpu_peak_tflops": args.gpu_peak_tflops, "mfu": args.mfu, "as_json": args.json}
    print(plan_command(config, **options, memory=args.memory, retrace=args.retrace, log=_say))


def cmd_check_memory(config: dict, args) -> None:
    from .train.memory_plan import check_memory_plan  # MemoryDoesNotFitError: a RuntimeError

    plan = check_memory_plan(config, log=_say)
    print(f"memory plan: {len(plan['runs'])} GPU runs fit (CPU runs exempt)")


def cmd_status(config: dict, args) -> None:
    from pythia_suite.status_page import show_status

    page = {"write_html": args.html, "html_path": args.html_path, "watch": args.watch}
    show_status(config, args.runs, ask_slurm=not args.no_slurm, as_json=args.json, **page, log=_say)


# ----------------------------------------------------------------------------- data commands


def cmd_fetch_shard(config: dict, args) -> None:
    from pythia_suite.data.shards import fetch_shard_with_record
    from pythia_suite.data.source import raw_shard

    index, entry = raw_shard(config, args.shard)
    fetch_shard_with_record(entry, index, args.output, log=_say)


def cmd_dedup_signatures(config: dict, args) -> None:
    from pythia_suite.data.dedup import stage

    stage.signatures_with_record(_dedup(config), args.shard, int(args.shard_index), args.output)


def cmd_dedup_buckets(config: dict, args) -> None:
    from pythia_suite.data.dedup import stage

    stage.buckets_with_record(_dedup(config), args.signatures, int(args.band_group), args.output)


def cmd_dedup_cluster(config: dict, args) -> None:
    from pythia_suite.data.dedup import stage

    stage.cluster_with_record(_dedup(config), args.edges, args.output)


def cmd_dedup_filter(config: dict, args) -> None:
    from pythia_suite.data.dedup import stage

    index = int(args.shard_index)
    stage.filter_with_record(
        _dedup(config), args.shard, index, args.removals, args.output, args.report
    )


def cmd_dedup_report(config: dict, args) -> None:
    from pythia_suite.data.dedup import stage

    files = (args.reports, args.shards, args.removals, args.edges)
    stage.report_with_record(_dedup(config), *files, args.output)


def cmd_train_tokenizer(config: dict, args) -> None:
    from pythia_suite.data.tokenize import train_tokenizer_with_record

    train_tokenizer_with_record(config["data"]["tokenizer"], args.shards, args.output)


def cmd_fetch_tokenizer(config: dict, args) -> None:
    from pythia_suite.data.tokenize import fetch_tokenizer_with_record

    fetch_tokenizer_with_record(config["data"]["tokenizer"], args.output)


def cmd_tokenize(config: dict, args) -> None:
    from pythia_suite.data.tokenize import tokenize_shard_with_record

    files = (args.shard, args.tokenizer, args.output_prefix)
    options = {"workers": args.workers, "documents_out": args.documents}
    tokenize_shard_with_record(config["data"]["tokenizer"], *files, **options)


def cmd_merge_datasets(config: dict, args) -> None:
    from pythia_suite.data.tokenize import merge_datasets_with_record

    merge_datasets_with_record(args.prefixes, args.output_prefix)


def cmd_build_order(config: dict, args) -> None:
    from pythia_suite.data.order import build_index_maps_with_record
    from pythia_suite.data.source import num_samples

    sizes = {"num_samples": num_samples(config), "seq_length": config["model"]["seq_length"]}
    build_index_maps_with_record(args.dataset_prefix, args.output, **sizes, seed=args.seed)


def cmd_document_table(config: dict, args) -> None:
    from pythia_suite.data.documents import build_document_table_with_record

    files = (args.dataset_prefix, args.tables, args.output)
    build_document_table_with_record(*files, standard=args.standard)


def cmd_build_lens(config: dict, args) -> None:
    from pythia_suite.data.run_lens import build_lens_with_record

    order = {"variant": args.variant, "seed": args.seed, "order_dir": args.order}
    files = {"dataset_prefix": args.dataset_prefix, "documents": args.documents}
    build_lens_with_record(config, **order, **files, output=args.output)


def cmd_lens(config: dict, args) -> None:
    from pythia_suite.data.run_lens import lens_answer

    run = cfg.get_run(config, args.run)
    options = {"document": args.document, "checkpoints": args.checkpoints}
    print(lens_answer(config, run, step=args.step, **options, as_json=args.json))


def cmd_fetch_preshuffled(config: dict, args) -> None:
    from pythia_suite.data.preshuffled import fetch_preshuffled_with_record
    from pythia_suite.data.source import preshuffled_repo

    repo = preshuffled_repo(config, args.variant)
    revision, seq = config["data"]["preshuffled"]["revision"], config["model"]["seq_length"]
    fetch_preshuffled_with_record(repo, args.output_prefix, revision=revision, seq_length=seq)


def cmd_fetch_idxmaps(config: dict, args) -> None:
    from pythia_suite.data.source import fetch_idxmaps_file_with_record

    fetch_idxmaps_file_with_record(config, args.variant, args.name, args.output, log=_say)


def cmd_unshard_idxmaps(config: dict, args) -> None:
    from pythia_suite.data.source import unshard_idxmaps_with_record

    unshard_idxmaps_with_record(config, args.variant, args.files, args.output_prefix)


def cmd_batch(config: dict, args) -> None:
    from pythia_suite.data.source import batch_command

    run = cfg.get_run(config, args.run)
    if text := batch_command(config, run, args.step, args.output, args.decode, log=_say):
        print(text)


def cmd_build_eval_tasks(config: dict, args) -> None:
    from pythia_suite.evaluate.stage import build_suite_tasks

    build_suite_tasks(config, args.heldout, args.tokenizer, args.output)


# ----------------------------------------------------------------------------- training


def cmd_train_segment(config: dict, args) -> None:
    from pythia_suite.train.segment import train_run_segment

    run = cfg.get_run(config, args.run)
    train_run_segment(config, run, args.step, args.output, args.resume_from, log=_say)


def cmd_await_segment(config: dict, args) -> None:
    from pythia_suite.train.segment import await_segment

    await_segment(config, cfg.get_run(config, args.run), args.step, args.timeout, log=_say)


# ----------------------------------------------------------------------------- export, publish


def cmd_export(config: dict, args) -> None:
    from pythia_suite.export import export_checkpoint_with_record

    dtype = config["publish"]["dtype"]
    export_checkpoint_with_record(args.checkpoint, args.tokenizer, args.output, dtype)


def cmd_publish(config: dict, args) -> None:
    from pythia_suite.publish.stage import publish_run_step

    run = cfg.get_run(config, args.run)
    published = publish_run_step(config, run, args.step, args.export, args.receipt)
    for check in published["verifications"]:
        _say(f"{check['where']} {check['branch']}: {check['files_compared']} files compared")
    from pythia_suite.retention import prune_after_publishing

    prune_after_publishing(config, run, log=_say)


def cmd_prune(config: dict, args) -> None:
    from pythia_suite.retention import prune_run

    run = cfg.get_run(config, args.run)
    for d in prune_run(config, run, dry_run=args.dry_run):
        print(f"step{d.step:<8} {d.action:<7} {d.reason}")


def cmd_model_card(config: dict, args) -> None:
    from pythia_suite.modelcard import write_model_card

    run = cfg.get_run(config, args.run)
    files = pythia_result_files(args.evals)
    write_model_card(config, run, evals_dir=args.evals, result_files=files, output=args.output)


# ----------------------------------------------------------------------------- evaluation


def cmd_evaluate(config: dict, args) -> None:
    from pythia_suite.evaluate.stage import evaluate_batch

    run = cfg.get_run(config, args.run)
    shots = {"zero": 0, "five": 5}[args.shots]
    evaluate_batch(config, run, shots, int(args.batch), args.exports, args.output)


def cmd_prefetch_eval_datasets(config: dict, args) -> None:
    from pythia_suite.evaluate.stage import prefetch_suite_datasets

    prefetch_suite_datasets(config, args.output)


def cmd_compare_reference(config: dict, args) -> None:
    from pythia_suite.evaluate import compare_with_reference

    _print_comparison(compare_with_reference(args.ours, args.reference, args.tolerance))


def cmd_evaluate_reference(config: dict, args) -> None:
    from pythia_suite.evaluate.stage import evaluate_reference

    checkpoint = (args.model, args.revision, args.shots, args.output, args.reference)
    _print_comparison(evaluate_reference(config, *checkpoint, args.tolerance, args.device))


def _print_comparison(comparison) -> None:
    """A reference comparison's summary; exit 1 unless every metric is within tolerance."""
    print(comparison.summary())
    if not comparison.passed:
        raise SystemExit(1)


def cmd_collect_evals(config: dict, args) -> None:
    from pythia_suite.evaluate.collect import collect_evals

    collect_evals(args.batches, args.output)


def cmd_verify_run(config: dict, args) -> None:
    from pythia_suite.publish.stage import verify_run_publication

    verify_run_publication(config, cfg.get_run(config, args.run), args.output)


def cmd_report(config: dict, args) -> None:
    from pythia_suite.report import write_suite_report

    write_suite_report(config, args.output, result_files=pythia_result_files)


def cmd_check_config(config: None, args) -> None:
    merged = cfg.load_config(args.files)
    runs = cfg.expand_runs(merged)
    print(
        f"{cfg.sources_text(args.files)}: valid: {len(runs)} runs, results in "
        f"{merged['paths']['results']}/"
    )


def cmd_verify(config: dict, args) -> None:
    from pythia_suite.provenance import verify

    result = verify(args.target)
    print(result.report())
    if not result.ok:
        raise SystemExit(1)


# ----------------------------------------------------------------------------- parser


def _arg(*flags: str, **options) -> tuple[tuple[str, ...], dict]:
    """One argument of a subcommand: `add_argument`'s flags and options."""
    return flags, options


def _one_of(*arguments: tuple) -> list:
    """Arguments of which exactly one must be given (a required mutually exclusive group)."""
    return list(arguments)


RUN = _arg("run")
OUTPUT = _arg("--output", required=True)

# Every subcommand: (name, handler, help, its arguments in order).
# fmt: off
COMMANDS = [
    ("runs", cmd_runs, "list the runs of the matrix", []),
    ("check-config", cmd_check_config,
     "check config files (overlays deep-merged in order): the first error in one line", [
        _arg("files", nargs="+", metavar="FILE"),
    ]),
    ("neox-config", cmd_neox_config, "print the GPT-NeoX training config of a run", [
        RUN, _arg("--dataset-prefix", help="data path written into the config"),
    ]),
    ("neox-doctor", cmd_neox_doctor, "check that GPT-NeoX v1.0 can launch here", [
        _arg("--neox-dir", help="GPT-NeoX checkout (default: training.neox.dir)"),
        _arg("--python", help="its environment's Python (default: training.neox.python)"),
    ]),
    ("neox-index-maps", cmd_neox_index_maps,
     "build a dataset's GPT-NeoX data prefix and index maps (rule neox_index_maps)", [
        _arg("--variant", required=True),
        _arg("--seed", type=int, required=True, help="the data seed"),
        _arg("--output", required=True, help="the directory to build"),
    ]),
    ("hf-config", cmd_hf_config, "print the transformers GPTNeoXConfig of a run as JSON", [RUN]),
    ("plan", cmd_plan, "parameters, tokens, FLOPs, storage and GPU-hours of every run", [
        _arg("--gpu-peak-tflops", type=float, help="override the per-device FLOP peak "
            "(default: each size's cluster.gpu peak_tflops)"),
        _arg("--mfu", type=float,
            help="model FLOPs utilisation (0-1; default cluster.assumed_mfu)"),
        _arg("--json", action="store_true"),
        _arg("--memory", action="store_true",
            help="also the peak GPU memory per rank of every GPU run (traced once, cached)"),
        _arg("--retrace", action="store_true",
            help="with --memory: trace again, ignoring the cache"),
    ]),
    ("check-memory", cmd_check_memory,
     "refuse (exit 1) when a run's layout does not fit its GPU's memory; CPU runs exempt", []),
    ("status", cmd_status, "where each run stands, from finished artifacts (no lock)", [
        _arg("runs", nargs="*", metavar="RUN", help="runs to show (default: all)"),
        _arg("--json", action="store_true", help="machine-readable status"),
        _arg("--watch", type=float, metavar="N", help="refresh every N seconds"),
        _arg("--html", action="store_true", help="also write the progress page"),
        _arg("--html-path", help="where (default: results/status/index.html)"),
        _arg("--no-slurm", action="store_true", help="do not ask squeue/sacct"),
    ]),
    ("fetch-shard", cmd_fetch_shard, "fetch and verify one configured Pile shard", [
        _arg("shard", help="index into data.raw.shards, e.g. 00"), OUTPUT,
    ]),
    ("dedup-signatures", cmd_dedup_signatures, "MinHash band hashes of one shard", [
        _arg("shard"), _arg("--shard-index", required=True), OUTPUT,
    ]),
    ("dedup-buckets", cmd_dedup_buckets, "candidate duplicate pairs of a group of bands", [
        _arg("signatures", nargs="+"), _arg("--band-group", required=True), OUTPUT,
    ]),
    ("dedup-cluster", cmd_dedup_cluster, "duplicate clusters -> documents to remove", [
        _arg("edges", nargs="+"), OUTPUT,
    ]),
    ("dedup-filter", cmd_dedup_filter, "write one shard without its duplicates", [
        _arg("shard"), _arg("--shard-index", required=True), _arg("--removals", required=True),
        OUTPUT, _arg("--report", required=True),
    ]),
    ("dedup-report", cmd_dedup_report, "merge per-shard dedup reports, check a sample", [
        _arg("--reports", nargs="+", required=True), _arg("--shards", nargs="+", required=True),
        _arg("--removals", required=True), _arg("--edges", nargs="+", required=True), OUTPUT,
    ]),
    ("train-tokenizer", cmd_train_tokenizer, "train a BPE with GPT-NeoX-20B's specials", [
        _arg("shards", nargs="+"), OUTPUT,
    ]),
    ("fetch-tokenizer", cmd_fetch_tokenizer, "copy or download the configured tokenizer", [OUTPUT]),
    ("tokenize", cmd_tokenize, "tokenize one shard into a Megatron mmap dataset", [
        _arg("shard"), _arg("--tokenizer", required=True), _arg("--output-prefix", required=True),
        _arg("--workers", type=int),
        _arg("--documents", help="also write the shard's document table (.documents.npz)"),
    ]),
    ("merge-datasets", cmd_merge_datasets, "concatenate mmap datasets in order", [
        _arg("prefixes", nargs="+"), _arg("--output-prefix", required=True),
    ]),
    ("build-order", cmd_build_order, "GPT-NeoX v1.0 index maps (the sample order)", [
        _arg("--dataset-prefix", required=True), _arg("--seed", type=int, required=True), OUTPUT,
    ]),
    ("document-table", cmd_document_table, "a dataset's document table (shard, subset)", [
        _arg("tables", nargs="+", help="the shards' .documents.npz, in data.raw.shards order"),
        _arg("--dataset-prefix", required=True),
        _arg("--standard", help="deduped: the standard table, to join on document text"), OUTPUT,
    ]),
    ("build-lens", cmd_build_lens, "the data lens of one (variant, data seed) order", [
        _arg("--variant", required=True), _arg("--dataset-prefix", required=True),
        _arg("--order", required=True, help="the order's directory of index maps"),
        _arg("--documents", help="the dataset's document table (subset labels)"),
        _arg("--seed", type=int, required=True), OUTPUT,
    ]),
    ("lens", cmd_lens, "which documents a run's steps and checkpoints read", [
        RUN,
        _one_of(
            _arg("--step", type=int, help="the documents of each sample of step N"),
            _arg("--checkpoints", action="store_true", help="the cumulative table"),
            _arg("--document", type=int, metavar="ID", help="every step holding it"),
        ),
        _arg("--json", action="store_true"),
    ]),
    ("fetch-preshuffled", cmd_fetch_preshuffled, "fetch and merge a preshuffled dataset", [
        _arg("variant"), _arg("--output-prefix", required=True),
    ]),
    ("fetch-idxmaps", cmd_fetch_idxmaps, "fetch and verify one pre-tokenized Pile file", [
        _arg("variant"), _arg("name", help="one of its files: STEM-NNNNN-of-LLLLL.bin or STEM.idx"),
        OUTPUT,
    ]),
    ("unshard-idxmaps", cmd_unshard_idxmaps, "unshard the pre-tokenized Pile of a variant", [
        _arg("variant"), _arg("--files", nargs="+", required=True, help="its shards and .idx"),
        _arg("--output-prefix", required=True),
    ]),
    ("batch", cmd_batch, "the (B, seq+1) token ids of one training step of a run", [
        RUN, _arg("--step", type=int, required=True),
        _arg("--output", help="write the batch as .npy"),
        _arg("--decode", type=int, nargs="?", const=1, default=0, metavar="N",
            help="print the first N sequences as text"),
    ]),
    ("build-eval-tasks", cmd_build_eval_tasks, "local lm-eval tasks from held-out text", [
        _arg("heldout"),
        _arg("--tokenizer", help="tokenizer.json: next-word distractors match token counts"),
        OUTPUT,
    ]),
    ("train-segment", cmd_train_segment, "train one checkpoint segment of a run", [
        RUN, _arg("--step", type=int, required=True, help="the checkpoint step to produce"),
        _arg("--resume-from", help="the previous checkpoint (default: from the schedule)"), OUTPUT,
    ]),
    ("await-segment", cmd_await_segment, "wait for another job training the segment", [
        RUN, _arg("--step", type=int, required=True, help="the checkpoint step of the segment"),
        _arg("--timeout", type=float, help="seconds to wait at most (default: no limit)"),
    ]),
    ("export", cmd_export, "a checkpoint as a Hugging Face model directory", [
        _arg("checkpoint"), _arg("--tokenizer", required=True), OUTPUT,
    ]),
    ("publish", cmd_publish, "publish one step to its branch and verify it", [
        RUN, _arg("--step", type=int, required=True), _arg("--export", required=True),
        _arg("--receipt", required=True),
    ]),
    ("prune", cmd_prune, "prune resume states as training.keep_resume_states says", [
        RUN, _arg("--dry-run", action="store_true", help="only show what the policy does"),
    ]),
    ("model-card", cmd_model_card, "render a run's model card", [
        RUN, _arg("--evals", required=True), OUTPUT,
    ]),
    ("verify-run", cmd_verify_run, "check a run's receipts and branch uniqueness", [RUN, OUTPUT]),
    ("evaluate", cmd_evaluate, "lm-eval on a batch of a run's checkpoints", [
        RUN, _arg("--shots", choices=["zero", "five"], required=True),
        _arg("--batch", required=True), _arg("--exports", nargs="+", required=True), OUTPUT,
    ]),
    ("prefetch-eval-datasets", cmd_prefetch_eval_datasets, "download lm-eval datasets", [OUTPUT]),
    ("compare-reference", cmd_compare_reference, "compare results with a reference file", [
        _arg("ours"), _arg("reference"), _arg("--tolerance", type=float, default=0.02),
    ]),
    ("evaluate-reference", cmd_evaluate_reference,
     "evaluate a published checkpoint and compare it with its published results", [
        _arg("model", help="a Hub repo, e.g. EleutherAI/pythia-410m"),
        _arg("--revision", default="main", help="e.g. step143000"),
        _arg("--shots", type=int, default=0),
        _arg("--reference", required=True, help="Pythia's result file for that step"),
        _arg("--tolerance", type=float, default=0.02), _arg("--device", default="cuda"), OUTPUT,
    ]),
    ("collect-evals", cmd_collect_evals, "a run's evaluations in Pythia's layout", [
        RUN, _arg("batches", nargs="+"), OUTPUT,
    ]),
    ("report", cmd_report, "plots, tables and the data-order check over all runs", [OUTPUT]),
    ("verify", cmd_verify, "walk the provenance chain from an artifact to the raw data", [
        _arg("target"),
    ]),
]
# fmt: on


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pythia-suite", description="Rebuild the Pythia Scaling Suite from one config."
    )
    parser.add_argument(
        "--config",
        action="append",
        metavar="FILE",
        help="config file; repeat to deep-merge overlays in order (default: the config the "
        "suite last started here used, <results>/config/effective.yaml, else config.yaml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func, help_text, arguments in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        for argument in arguments:
            if isinstance(argument, list):  # _one_of
                group = p.add_mutually_exclusive_group(required=True)
                for flags, options in argument:
                    group.add_argument(*flags, **options)
            else:
                flags, options = argument
                p.add_argument(*flags, **options)
    return parser


def _config_files(args) -> list:
    """--config's files, or (saying so on stderr) the config of the suite last run here."""
    if args.config:
        return args.config
    found, why = cfg.find_default_config()
    _say(f"pythia-suite: config {found[0]} ({why}; --config FILE to choose)")
    return found


# Commands whose output is their answer: no "done in" line follows it.
_ANSWERS = set(
    "runs check-config neox-config neox-doctor hf-config plan status check-memory verify "
    "compare-reference lens".split()
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.time()
    try:
        config = None if args.command == "check-config" else cfg.load_config(_config_files(args))
        args.func(config, args)
    except (cfg.ConfigError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"pythia-suite {args.command}: error: {err}", file=sys.stderr)
        return 1
    if args.command not in _ANSWERS:
        _say(f"pythia-suite {args.command}: done in {time.time() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
