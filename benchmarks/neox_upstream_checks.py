"""Issue 18's figures: how many of the 16 runs GPT-NeoX v1.0 / DeeperSpeed v1.0's own code
accepts, run from ../shared/anchors/upstream (tests/upstream_support.py).

- parser: each run's segment config (full size, its own node count), written as the package at
  ``--src`` writes it, through DeeperSpeed v1.0's ``runner.main`` (hostfile, SlurmRunner
  ``parse_user_args``, ``get_cmd``) as deepy.py hands it over;
- keys: every key of the run's config and of a segment config is a field of v1.0's ``NeoXArgs``
  dataclasses (``NeoXArgs(**config)`` would not raise TypeError), Literal values allowed;
- converter: v1.0's ``tools/convert_to_hf.py`` (as published, and as envs/gpt-neox.post-deploy.sh
  patches it) under transformers 4.24 on a reduced-width checkpoint of each run's layout, logits
  compared with the saved model at fp16 tolerance (``--converter``; a minute or two).

``--src`` picks the package to measure: a checkout's ``src``, with the ``config.yaml`` beside
it (e.g. ``git archive <commit> src config.yaml`` unpacked, for the "before" figures); default:
this repository's. Run from the repository root with the venv:

    python benchmarks/neox_upstream_checks.py [--src PATH] [--converter]
"""

import argparse
import copy
import importlib
import sys
import tempfile
from pathlib import Path

from neox_compat import load_neox

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config.yaml"
RUNS = [f"pythia-{s}{v}" for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
        for v in ("", "-deduped")]  # fmt: skip


class Patch:
    """A minimal pytest.MonkeyPatch stand-in (setattr, undone by ``undo``)."""

    def __init__(self):
        self.saved = []

    def setattr(self, target, name, value):
        self.saved.append((target, name, getattr(target, name)))
        setattr(target, name, value)

    def undo(self):
        for target, name, value in reversed(self.saved):
            setattr(target, name, value)
        self.saved.clear()


def write_segment(neox, config, run, path: Path, nodes: int) -> dict:
    """The segment config file a job writes, with the package under measure."""
    segment = neox.NeoXSegment(path.parent / "ck", 1000, 2000, str(path.parent / "document"),
                               str(path.parent / "tok.json"), nodes)  # fmt: skip
    if hasattr(neox, "write_run_segment_config"):
        return neox.write_run_segment_config(config, run, segment, path)
    import yaml  # the writer before issue 18: train_segment_neox dumped block YAML

    written = neox.run_neox_config(config, run, segment=segment)
    path.write_text(yaml.safe_dump(written, sort_keys=False, default_flow_style=None))
    return written


def parser_and_keys(cfg, neox, us) -> None:
    config = cfg.load_config([CONFIG])
    parsed, accepted = [], []
    for name in RUNS:
        run = cfg.get_run(config, name)
        nodes = config["sizes"][run.size]["cluster"]["nodes"]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "segment.json"
            written = write_segment(neox, config, run, path, nodes)
            hostfile = neox.write_hostfile(Path(tmp) / "hostfile",
                                           [f"gpu{i:02d}" for i in range(nodes)], 8)  # fmt: skip
            env = {"DLTS_HOSTFILE": str(hostfile), "MASTER_ADDR": "gpu00"}
            patch = Patch()
            try:
                cmd = us.run_deeperspeed_main(us.deepy_main_args([path], env), patch)
                parsed.append(name) if cmd[0] == "srun" else None
            except Exception as err:  # noqa: BLE001 - the figure counts failures
                print(f"  parser  {name}: {type(err).__name__}: {str(err)[:90]}")
            finally:
                patch.undo()
        fields = us.neox_args_without_post_init()
        try:
            for conf in (neox.run_neox_config(config, run), written):
                fields(**{k.replace("-", "_"): v for k, v in conf.items()})
                bad = us.literal_violations(conf)
                if bad:
                    raise ValueError(bad)
            accepted.append(name)
        except (TypeError, ValueError) as err:
            print(f"  keys    {name}: {type(err).__name__}: {str(err)[:90]}")
    print(f"segment configs DeeperSpeed v1.0's SLURM runner parses: {len(parsed)}/16")
    print(f"runs whose every key v1.0's NeoXArgs accepts:          {len(accepted)}/16")


def converter(cfg, neox, us) -> None:
    import torch
    from test_neox_upstream import _converted_logits, _reduced_checkpoint

    config = cfg.load_config([CONFIG])
    layouts = {"70m": "TP 1", "6.9b": "TP 2", "12b": "TP 4", "14m": "sequential"}
    runs_of = {size: [n for n in RUNS if cfg.get_run(config, n).size == size] or [f"pythia-{size}"]
               for size in layouts}  # fmt: skip
    runs_of["70m"] = [n for n in RUNS if cfg.get_run(config, n).size not in ("6.9b", "12b")]
    for patched in (False, True):
        converted = []
        for size, layout in layouts.items():
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp)
                config_file, _, model = _reduced_checkpoint(copy.deepcopy(config), size, root)
                checkout, python = us.upstream_converter_checkout(root / "neox", patched=patched)
                tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
                try:
                    out = neox.convert_neox_checkpoint(
                        checkout, root / "ck" / "global_step7", config_file, root / "hf",
                        python=str(python),
                    )  # fmt: skip
                    with torch.no_grad():
                        expected = model.half().float()(tokens).logits
                    err = (_converted_logits(out, tokens) - expected).abs().max().item()
                    verdict = "matches" if err < 1e-3 else "WRONG"
                    print(
                        f"  {'patched' if patched else 'as published'} converter, {layout:10} "
                        f"({size}): max |logit diff| {err:.1e} -> {verdict}"
                    )
                    if err < 1e-3:
                        converted += runs_of[size]
                except Exception as err:  # noqa: BLE001
                    print(
                        f"  {'patched' if patched else 'as published'} converter, {layout:10} "
                        f"({size}): {type(err).__name__}: {str(err).splitlines()[0][:80]}"
                    )
        suite = [n for n in converted if n in RUNS]
        print(
            f"{'patched' if patched else 'published'} converter converts {len(suite)}/16 runs' "
            f"layouts correctly{' and 14m/31m' if 'pythia-14m' in converted else ''}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=REPO / "src")
    parser.add_argument("--converter", action="store_true")
    args = parser.parse_args()
    global CONFIG
    CONFIG = args.src.resolve().parent / "config.yaml"
    sys.path[:0] = [str(args.src.resolve()), str(REPO / "tests")]
    for name in [m for m in sys.modules if m.startswith("pythia_suite")]:
        del sys.modules[name]
    cfg = importlib.import_module("pythia_suite.config")
    neox = load_neox()
    print(f"package: {Path(cfg.__file__).parents[1]}, config: {CONFIG}")
    import upstream_support as us

    parser_and_keys(cfg, neox, us)
    if args.converter:
        converter(cfg, neox, us)
    return 0


if __name__ == "__main__":
    sys.exit(main())
