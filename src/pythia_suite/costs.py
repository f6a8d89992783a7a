"""Device-hours of the suite: predicted from FLOPs, measured from finished segments, and the
prediction recorded once when the suite starts (`results/plan.json`).

Predicted device-hours of a run = training FLOPs / (peak FLOP/s per device x MFU) / 3600, with
the peak from the size's device record (`config.gpu_record`; on CPU sizes the record describes
one CPU rank) and the MFU from `cluster.assumed_mfu` (or `plan --mfu`).

Measured: the segment summaries of finished segments of the same size and layout (nodes,
devices, tensor parallel, device kind) give tokens per wall-clock second (set-up and saves
included), so measured device-hours = tokens / that rate x devices / 3600: the same
definition `status` uses for hours spent (allocated devices x segment wall time).
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

from pythia_suite import config as cfg
from pythia_suite import paths, units
from pythia_suite.atomic import write_text_atomic
from pythia_suite.jsonfile import JSONFileError, read_json
from pythia_suite.train.summary import SEGMENT_SUMMARY_NAME, read_summary

PLAN_FORMAT = "pythia-suite/plan/1"


def device_kind(config: dict, size: str) -> str:
    """ "cuda" for sizes with GPUs, "cpu" for CPU sizes (cluster.gpus_per_node: 0)."""
    return "cuda" if config["sizes"][size]["cluster"]["gpus_per_node"] else "cpu"


def layout_key(config: dict, size: str) -> dict:
    """What makes two segments' throughput comparable: same size on the same layout."""
    cluster = config["sizes"][size]["cluster"]
    return {
        "size": size,
        "nodes": cluster["nodes"],
        "devices": cfg.devices(config, size),
        "tensor_parallel": config["sizes"][size]["tensor_parallel"],
        "device_kind": device_kind(config, size),
    }


def _summary_key(summary: dict) -> dict:
    return {
        "size": summary.get("size"),
        "nodes": summary.get("nodes"),
        "devices": summary.get("devices"),
        "tensor_parallel": summary.get("tensor_parallel"),
        "device_kind": summary.get("device_kind"),
    }


def measured_rates(config: dict) -> dict[str, dict]:
    """Per size: the measured throughput of its finished segments on the configured layout.

    `{size: {"segments", "tokens", "wall_s", "train_time_s", "tokens_per_s_wall",
    "tokens_per_s", "mfu"}}`; sizes without a matching segment are absent. Summaries that are
    unreadable or of another layout are skipped (`status` names unreadable ones).
    """
    results = config["paths"]["results"]
    sums: dict[str, dict] = {}
    for run in cfg.expand_runs(config).values():
        want = layout_key(config, run.size)
        root = os.path.dirname(paths.checkpoint_dir(results, run.name, 0))
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            if not name.startswith("step"):
                continue
            try:
                summary = read_summary(os.path.join(root, name, SEGMENT_SUMMARY_NAME))
            except ValueError:
                continue
            if summary is None or _summary_key(summary) != want:
                continue
            acc = sums.setdefault(
                run.size,
                {"segments": 0, "tokens": 0, "wall_s": 0.0, "train_time_s": 0.0, "mfu_h": []},
            )
            acc["segments"] += 1
            acc["tokens"] += summary["tokens"]
            acc["wall_s"] += summary["wall_s"]
            acc["train_time_s"] += summary.get("train_time_s") or 0.0
            if summary.get("mfu") is not None:
                acc["mfu_h"].append((summary["mfu"], summary["device_hours"]))
    out = {}
    for size, acc in sums.items():
        if acc["wall_s"] <= 0 or acc["tokens"] <= 0:
            continue
        hours = sum(h for _, h in acc["mfu_h"])
        out[size] = {
            "segments": acc["segments"],
            "tokens": acc["tokens"],
            "wall_s": acc["wall_s"],
            "train_time_s": acc["train_time_s"],
            "tokens_per_s_wall": acc["tokens"] / acc["wall_s"],
            "tokens_per_s": acc["tokens"] / acc["train_time_s"] if acc["train_time_s"] else None,
            "mfu": sum(m * h for m, h in acc["mfu_h"]) / hours if hours > 0 else None,
        }
    return out


def cost_rows(
    config: dict,
    *,
    mfu: float | None = None,
    peak_tflops: float | None = None,
    measured: dict[str, dict] | None = None,
) -> list[dict]:
    """Per run: devices, peak, MFU and device-hours, each with where it came from.

    `mfu` / `peak_tflops` override `cluster.assumed_mfu` / the device record. With `measured`
    (from `measured_rates`), a size that has finished segments on its layout gets measured
    tokens/s, MFU and device-hours ("measured"); others keep the prediction ("assumed").
    """
    tokens = cfg.total_tokens(config)
    assumed_mfu = mfu if mfu is not None else config["cluster"]["assumed_mfu"]
    mfu_source = "--mfu" if mfu is not None else "cluster.assumed_mfu"
    rows = []
    for run in cfg.expand_runs(config).values():
        record = cfg.gpu_record(config, run.size)
        peak = peak_tflops if peak_tflops is not None else record["peak_tflops"]
        devices = cfg.devices(config, run.size)
        flops_per_token = cfg.training_flops_per_token(config, run.size)
        flops = flops_per_token * tokens
        predicted = flops / (peak * 1e12 * assumed_mfu) / 3600
        row = {
            "run": run.name,
            "size": run.size,
            "device_kind": device_kind(config, run.size),
            "device": record["name"],
            "devices": devices,
            "peak_tflops": peak,
            "peak_source": "--gpu-peak-tflops" if peak_tflops is not None else "device record",
            "tokens": tokens,
            "train_flops": flops,
            "predicted_device_hours": predicted,
            "mfu": assumed_mfu,
            "mfu_source": f"assumed ({mfu_source})",
            # Tokens/s over all devices that the assumed MFU implies.
            "tokens_per_s": peak * 1e12 * assumed_mfu * devices / flops_per_token,
            "tokens_per_s_source": "assumed",
            "device_hours": predicted,
            "device_hours_source": "assumed",
        }
        got = (measured or {}).get(run.size)
        if got:
            label = f"measured ({got['segments']} segments)"
            row["device_hours"] = tokens / got["tokens_per_s_wall"] * devices / 3600
            row["device_hours_source"] = label
            if got["tokens_per_s"] is not None:
                row["tokens_per_s"] = got["tokens_per_s"]
                row["tokens_per_s_source"] = label
            if got["mfu"] is not None:
                row["mfu"] = got["mfu"]
                row["mfu_source"] = label
        rows.append(row)
    return rows


def merge_identical_rows(rows: list[dict], columns) -> list[tuple[str, dict]]:
    """(label, row) per group of consecutive runs whose `columns` are all equal (standard and
    deduped runs of a size, before measurements tell them apart): 'pythia-70m (+deduped)'."""
    merged: list[tuple[list[str], dict]] = []
    for row in rows:
        values = [row[c] for c in columns]
        if merged and [merged[-1][1][c] for c in columns] == values:
            merged[-1][0].append(row["run"])
        else:
            merged.append(([row["run"]], row))
    out = []
    for names, row in merged:
        first = names[0]
        extra = [n[len(first) :].lstrip("-") if n.startswith(first) else n for n in names[1:]]
        out.append((first + (f" (+{', '.join(extra)})" if extra else ""), row))
    return out


_PLAN_COLUMNS = (
    "params",
    "non_embedding_params",
    "tokens",
    "train_flops",
    "checkpoints",
    "published_bytes",
    "resume_bytes_all",
    "resume_bytes_kept",
    "resume_states_kept",
)


def render_plan_table(rows: list[dict]) -> str:
    """plan's size section (`config.plan_rows`): parameters, tokens, FLOPs and storage per run,
    identical runs on one row, with a legend line for every abbreviation."""
    header = (
        f"{'run':<30} {'params':>7} {'non-emb':>7} {'tokens':>7} {'train FLOPs':>13} "
        f"{'ckpts':>5} {'published':>10} {'resume (all)':>12} {'resume (kept)':>13}"
    )
    lines = ["SIZE AND STORAGE", header, "-" * len(header)]
    for label, r in merge_identical_rows(rows, _PLAN_COLUMNS):
        kept = f"{units.size_bytes(r['resume_bytes_kept'])} x{r['resume_states_kept']}"
        lines.append(
            f"{label:<30} {units.count(r['params']):>7} "
            f"{units.count(r['non_embedding_params']):>7} {units.count(r['tokens']):>7} "
            f"{units.flops(r['train_flops']):>13} {r['checkpoints']:>5} "
            f"{units.size_bytes(r['published_bytes']):>10} "
            f"{units.size_bytes(r['resume_bytes_all']):>12} {kept:>13}"
        )
    lines.append("")
    lines += textwrap.wrap(
        "params: parameters (K/M/B = thousand/million/billion); non-emb: without the embedding "
        "matrices; tokens: tokens trained; train FLOPs: 6 x params x tokens plus attention; "
        "ckpts: checkpoints (Hub branches); published: all branches' weights in publish.dtype; "
        "resume: full training states (~16 bytes per parameter), all of them or the newest "
        "training.keep_resume_states kept (x N); (+deduped): runs identical in every column.",
        width=100,
    )
    return "\n".join(lines)


def render_plan(
    config: dict,
    rows: list[dict],
    *,
    gpu_peak_tflops: float | None,
    mfu: float,
    mfu_override: float | None,
) -> str:
    """The text of `pythia-suite plan`: the size table of `rows` (`config.plan_rows`), the line
    naming the peak and MFU its device-hours assume, and the throughput section, measured where
    finished segments have figures (`mfu_override`: plan --mfu, else None)."""
    peaks = (
        f"{gpu_peak_tflops:g} TFLOP/s peak"
        if gpu_peak_tflops
        else "each size's cluster.gpu peak ("
        + ", ".join(sorted({f"{r['gpu']} {r['peak_tflops']:g} TFLOP/s" for r in rows}))
        + ")"
    )
    assumed = f"device-hours at {peaks} and {mfu:.0%} MFU unless measured (below)"
    costs = cost_rows(config, mfu=mfu_override, measured=measured_rates(config))
    return "\n".join([render_plan_table(rows), assumed, "", render_cost_table(costs)])


_COST_COLUMNS = ("device", "devices", "peak_tflops", "mfu", "tokens_per_s", "device_hours")


def render_cost_table(rows: list[dict]) -> str:
    """The plan's throughput and device-hours section, figures marked measured or assumed."""
    header = (
        f"{'run':<30} {'device':<18} {'devs':>4} {'peak TF/s':>9} {'MFU':>6} {'tokens/s':>8} "
        f"{'device-hours':>12}  source"
    )
    lines = ["THROUGHPUT AND DEVICE-HOURS", header, "-" * len(header)]
    columns = (*_COST_COLUMNS, "device_hours_source")
    for label, r in merge_identical_rows(rows, columns):
        source = r["device_hours_source"]
        if source != "assumed":  # the prediction beside the measurement
            source += f"; predicted {units.hours(r['predicted_device_hours'])}"
        lines.append(
            f"{label:<30} {r['device'][:18]:<18} {r['devices']:>4} {r['peak_tflops']:>9.4g} "
            f"{r['mfu']:>6.1%} {units.count(r['tokens_per_s']):>8} "
            f"{units.hours(r['device_hours']):>12}  {source}"
        )
    assumed = {r["mfu_source"] for r in rows if r["mfu_source"].startswith("assumed")}
    measured = [r["run"] for r in rows if r["device_hours_source"] != "assumed"]
    total = sum(r["device_hours"] for r in rows)
    lines.append("")
    lines.append(f"{len(rows)} runs, {units.hours(total)} device-hours in all.")
    lines += textwrap.wrap(
        "devs: devices allocated (GPUs, or CPU ranks on CPU sizes); peak TF/s: the device "
        "record's peak, in 10^12 FLOP/s; MFU: model FLOPs utilisation; tokens/s: over all "
        "devices; device-hours: allocated devices x wall time (GPU-hours on GPUs, "
        "CPU-rank-hours on CPU sizes), predicted = FLOPs / (peak x MFU) / 3600 until finished "
        "segments measure it.",
        width=100,
    )
    if assumed:
        mfus = sorted({f"{r['mfu']:.0%}" for r in rows if r["mfu_source"].startswith("assumed")})
        sources = sorted(a.removeprefix("assumed ") for a in assumed)
        lines.append(f"assumed MFU {', '.join(mfus)} {', '.join(sources)}")
    lines.append(
        f"measured (finished segments of the same size and layout): {', '.join(measured)}"
        if measured
        else "measured: none yet (no finished segment summaries); every figure is assumed"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the recorded plan


def plan_record(config: dict, *, mfu: float | None = None) -> dict:
    """The prediction as recorded at suite start: every run's predicted device-hours."""
    rows = cost_rows(config, mfu=mfu)
    return {
        "format": PLAN_FORMAT,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": {
            r["run"]: {
                "size": r["size"],
                "device_kind": r["device_kind"],
                "device": r["device"],
                "devices": r["devices"],
                "peak_tflops": r["peak_tflops"],
                "mfu": r["mfu"],
                "tokens": r["tokens"],
                "train_flops": r["train_flops"],
                "device_hours": r["predicted_device_hours"],
            }
            for r in rows
        },
        "total_device_hours": sum(r["predicted_device_hours"] for r in rows),
    }


def record_plan(config: dict, path: str | os.PathLike | None = None) -> bool:
    """Write the prediction to `path` (default `paths.plan_record`) unless one is there.

    Written once: a later start, or a changed config, never overwrites it (delete the file to
    record a new prediction). The file appears whole (written aside, then hard-linked into
    place, which fails if another start won the race). Returns whether it was written.
    """
    path = Path(path or paths.plan_record(config["paths"]["results"]))
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_text_atomic(tmp, json.dumps(plan_record(config), indent=1) + "\n")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def read_recorded_plan(results: str) -> dict | None:
    """The recorded prediction with its `path`, or None when none was recorded.

    Raises ValueError naming the file when it exists but is not a plan record.
    """
    path = paths.plan_record(results)
    try:
        data = read_json(path)
    except FileNotFoundError:
        return None
    except JSONFileError as err:
        raise ValueError(f"{path}: unreadable plan record: {err.reason}") from None
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise ValueError(f"{path}: format is not {PLAN_FORMAT!r}")
    data["path"] = path
    return data


def plan_command(
    config: dict,
    *,
    gpu_peak_tflops: float | None,
    mfu: float | None,
    memory: bool,
    retrace: bool,
    as_json: bool,
    log=None,
) -> str:
    """The output of `pythia-suite plan`: the size and throughput sections (`render_plan`), and
    with `memory` the memory plan's table (traced once, cached; `retrace` ignores the cache);
    `as_json` gives the rows (and the memory plan) as JSON instead."""
    from pythia_suite import config as cfg

    assumed = config["cluster"]["assumed_mfu"] if mfu is None else mfu
    rows = cfg.plan_rows(config, gpu_peak_tflops, assumed)
    plan = None
    if memory:
        from pythia_suite.train.memory_plan import memory_plan

        plan = memory_plan(config, use_cache=not retrace, log=log)
    if as_json:
        return json.dumps({"runs": rows, "memory": plan} if plan else rows, indent=2)
    options = {"gpu_peak_tflops": gpu_peak_tflops, "mfu": assumed, "mfu_override": mfu}
    text = render_plan(config, rows, **options)
    if plan is not None:
        from pythia_suite.train.memory_plan import render_memory_table

        text += "\n\n" + render_memory_table(plan)
    return text
