"""The miniature next-word task's control: does an untrained model score chance?

    python benchmarks/next_word_control.py [RESULTS] [--inits 10] [--items N]

Needs a finished miniature suite under RESULTS (its tokenizer, its exports' configs, its
task files). Builds the next-word items twice from the held-out shard, with the suite's
seed, tokenizer and item count (or ``--items``): as the suite does (each word the answer of at
most 3 items) and uncapped.
Then initialises each miniature size ``--inits`` times (GPT-NeoX's init, weight seeds
0..N-1) and scores both item sets as lm-eval does (sum of the choice's token log-probabilities
after the context; the highest wins). Prints, per size and item set, the mean and spread of
step-0 accuracy over initialisations beside the binomial standard error, and how many
initialisations land outside chance +- 2 binomial standard errors. A spread well above the
binomial one means the items are not independent (one word's random preference moves many).

As a check of the scorer, it also scores the suite's own step-0 and final exports on the
suite's items and prints the accuracy lm-eval recorded for them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from pythia_suite import evaluate as ev
from pythia_suite.data.tokenize import load_tokenizer
from pythia_suite.evaluate.tasks import _continuation_token_counter
from pythia_suite.train.model import build_model, init_gpt_neox_weights


def score(model, tokenizer, items: list[dict], batch: int = 512) -> list[bool]:
    """Per item: does the gold choice have the highest summed log-probability?"""
    seqs, spans = [], []
    for item in items:
        context = tokenizer.encode(item["context"], add_special_tokens=False).ids
        for choice in item["choices"]:
            continuation = tokenizer.encode(" " + choice, add_special_tokens=False).ids
            seqs.append(context + continuation)
            spans.append(len(continuation))
    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = torch.tensor(seq)
    loglikelihoods = []
    with torch.no_grad():
        for start in range(0, len(seqs), batch):
            logprobs = model(input_ids=ids[start : start + batch]).logits.log_softmax(-1)
            for row, seq in enumerate(seqs[start : start + batch]):
                n = spans[start + row]
                targets = torch.tensor(seq[len(seq) - n :])
                picked = logprobs[row, len(seq) - n - 1 : len(seq) - 1].gather(1, targets[:, None])
                loglikelihoods.append(picked.sum().item())
    k = len(items[0]["choices"])
    return [
        max(range(k), key=lambda c: loglikelihoods[k * i + c]) == item["gold"]
        for i, item in enumerate(items)
    ]


def recorded_accuracy(results: Path, run: str, step: int) -> float | None:
    """The 0-shot next-word accuracy lm-eval wrote for ``run`` at ``step`` (None if absent)."""
    path = results / "evals" / run / "zero-shot" / f"{run}_step{step}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())["results"].get(ev.NEXT_WORD_TASK, {}).get("acc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="results")
    parser.add_argument("--inits", type=int, default=10)
    parser.add_argument("--items", type=int, help="default: the suite's item count")
    args = parser.parse_args()
    results = Path(args.results)
    tasks = results / "data" / "eval_tasks"
    manifest = json.loads((tasks / "manifest.json").read_text())
    tokenizer_file = results / "data" / "tokenizer" / "tokenizer.json"
    tokenizer = load_tokenizer(tokenizer_file)
    args.items = args.items or manifest["counts"][ev.NEXT_WORD_TASK]
    texts = ev.heldout_texts(manifest["source"])
    count = _continuation_token_counter(tokenizer_file)
    item_sets = {
        "capped (the suite's)": ev.build_next_word_items(
            texts, args.items, manifest["seed"], token_count=count
        ),
        "uncapped": ev.build_next_word_items(
            texts, args.items, manifest["seed"], token_count=count, max_items_per_answer=10**9
        ),
    }
    suite_items = [json.loads(line) for line in (tasks / f"{ev.NEXT_WORD_TASK}.jsonl").open()]
    binomial = math.sqrt(0.25 * 0.75 / args.items)
    runs = sorted(p.parent.parent.name for p in results.glob("runs/*/exports/step0"))
    sizes = {run.split("-")[1]: run for run in runs if not run.endswith("-deduped")}

    print(f"step-0 accuracy over {args.inits} initialisations, {args.items} items, chance 0.25")
    print(
        f"{'size':<6} {'items':<22} {'mean':>6} {'sd':>7} {'binomial sd':>12} {'outside 2 SE':>13}"
    )
    for size, run in sizes.items():
        config = json.loads(
            (results / "runs" / run / "exports" / "step0" / "config.json").read_text()
        )
        model = build_model(config).eval()
        for name, items in item_sets.items():
            accuracies = []
            for seed in range(args.inits):
                init_gpt_neox_weights(model, weight_seed=seed)
                correct = score(model, tokenizer, items)
                accuracies.append(sum(correct) / len(correct))
            outside = sum(abs(a - 0.25) > 2 * binomial for a in accuracies)
            print(
                f"{size:<6} {name:<22} {statistics.mean(accuracies):>6.3f} "
                f"{statistics.stdev(accuracies):>7.4f} {binomial:>12.4f} "
                f"{outside:>6}/{args.inits}"
            )

    from transformers import GPTNeoXForCausalLM

    print("\nscorer check on the suite's items: this scorer vs lm-eval's recorded accuracy")
    final = max(int(p.name[4:]) for p in (results / "runs" / runs[0] / "exports").glob("step*"))
    for run in runs:
        for step in (0, final):
            export = results / "runs" / run / "exports" / f"step{step}"
            model = GPTNeoXForCausalLM.from_pretrained(export, torch_dtype=torch.float32).eval()
            correct = score(model, tokenizer, suite_items)
            recorded = recorded_accuracy(results, run, step)
            shown = "n/a" if recorded is None else f"{recorded:.3f}"
            print(f"{run:<22} step{step:<5} {sum(correct) / len(correct):.3f}  lm-eval {shown}")


if __name__ == "__main__":
    main()
