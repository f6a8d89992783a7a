"""Time a no-op publish rerun over every branch of a run, to the (fake) Hub and the local hub.

Builds ``--branches`` real exports (Pythia's 154 checkpoint steps by default) of a small
GPTNeoX with ``pythia_suite.export.export_checkpoint``, publishes them once, then times:

* the Hub rerun: ``publish_step`` for every branch against the recorded-listing fake
  (``tests/hub_fake.py``) whose listings already match, so nothing may be sent; and
  ``verify_run`` over the run;
* the local hub rerun: ``publish_local`` for every branch into a huggingface_hub cache.

Run: ``python benchmarks/publish_noop.py [--branches 154] [--hidden 64] [--layers 2]``.
It prints the timings; nothing is written outside a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hub_fake import FakeHfApi  # noqa: E402

from pythia_suite.export import export_checkpoint, pythia_state_dict_keys  # noqa: E402
from pythia_suite.publish import local_files, publish_local, publish_step, verify_run  # noqa: E402

PYTHIA_STEPS = [0] + [2**i for i in range(10)] + list(range(1000, 143001, 1000))


def make_checkpoint(path: Path, step: int, hidden: int, layers: int, vocab: int) -> None:
    """A training checkpoint with random fp32 weights (step0 and step1 equal, as in Pythia)."""
    gen = torch.Generator().manual_seed(0 if step == 1 else step)
    shapes = {"gpt_neox.embed_in.weight": (vocab, hidden), "embed_out.weight": (vocab, hidden)}
    tensors = {}
    for key in pythia_state_dict_keys(layers):
        if key in shapes:
            shape = shapes[key]
        elif "query_key_value" in key:
            shape = (3 * hidden, hidden) if key.endswith("weight") else (3 * hidden,)
        elif "dense_h_to_4h" in key:
            shape = (4 * hidden, hidden) if key.endswith("weight") else (4 * hidden,)
        elif "dense_4h_to_h.weight" in key:
            shape = (hidden, 4 * hidden)
        elif key.endswith("weight") and "dense" in key:
            shape = (hidden, hidden)
        else:
            shape = (hidden,)
        tensors[key] = torch.randn(shape, generator=gen) * 0.02
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"))
    config = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "intermediate_size": 4 * hidden,
        "max_position_embeddings": 128,
        "rotary_pct": 0.25,
    }
    (path / "hf_config.json").write_text(json.dumps(config))


def make_tokenizer(path: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>", "<|padding|>"])
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog " * 200], trainer)
    tok.save(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--branches", type=int, default=len(PYTHIA_STEPS))
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=512)
    args = parser.parse_args()
    steps = sorted(PYTHIA_STEPS[: args.branches])
    repo = "pythia-suite/pythia-bench"

    with tempfile.TemporaryDirectory(prefix="publish_noop.") as tmp:
        root = Path(tmp)
        make_tokenizer(root / "tokenizer.json", args.vocab)
        t0 = time.perf_counter()
        exports = {}
        for step in steps:
            make_checkpoint(root / "ck" / f"step{step}", step, args.hidden, args.layers, args.vocab)
            exports[step] = export_checkpoint(
                root / "ck" / f"step{step}", root / "tokenizer.json", root / "ex" / f"step{step}"
            )
        t_export = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in exports[steps[0]].iterdir())
        print(f"exports: {len(steps)} x {size / 1e6:.2f} MB, built in {t_export:.2f} s")

        api = FakeHfApi()
        t0 = time.perf_counter()
        for step in steps:
            publish_step(api, repo, step, exports[step], final=step == steps[-1])
        t_first = time.perf_counter() - t0
        print(f"hub first publish:  {len(steps)} branches + main in {t_first:.3f} s")

        api.calls.clear()
        t0 = time.perf_counter()
        sent = 0
        for step in steps:
            result = publish_step(
                api,
                repo,
                step,
                exports[step],
                final=step == steps[-1],
                receipt_path=root / "published" / f"step{step}.json",
            )
            sent += result.sent
        t_noop = time.perf_counter() - t0
        assert sent == 0 and "create_commit" not in api.calls, "a no-op rerun sent something"
        print(
            f"hub no-op rerun:    {len(steps)} branches + main in {t_noop:.3f} s "
            f"({1e3 * t_noop / len(steps):.2f} ms/branch, {len(api.calls)} API calls, 0 commits)"
        )
        t0 = time.perf_counter()
        for step in steps:
            local_files(exports[step])
        t_hash = time.perf_counter() - t0
        print(f"  of which hashing: {t_hash:.3f} s ({len(steps)} export dirs)")
        t0 = time.perf_counter()
        verify_run(api, repo, steps)
        print(f"hub verify_run:     {len(steps) + 1} branches in {time.perf_counter() - t0:.3f} s")

        cache = root / "hub"
        t0 = time.perf_counter()
        for step in steps:
            publish_local(cache, repo, f"step{step}", exports[step])
        publish_local(cache, repo, "main", exports[steps[-1]])
        t_local_first = time.perf_counter() - t0
        print(f"local first publish: {len(steps)} branches + main in {t_local_first:.3f} s")
        before = {p: p.lstat().st_mtime_ns for p in cache.rglob("*")}
        t0 = time.perf_counter()
        for step in steps:
            publish_local(cache, repo, f"step{step}", exports[step])
        publish_local(cache, repo, "main", exports[steps[-1]])
        t_local = time.perf_counter() - t0
        assert {p: p.lstat().st_mtime_ns for p in cache.rglob("*")} == before, "rerun wrote"
        print(
            f"local no-op rerun:  {len(steps)} branches + main in {t_local:.3f} s "
            f"({1e3 * t_local / (len(steps) + 1):.2f} ms/branch, nothing written)"
        )


if __name__ == "__main__":
    main()
