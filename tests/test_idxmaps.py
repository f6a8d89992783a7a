"""data.source: idxmaps: Pythia's pre-tokenized Pile fetched, verified and unsharded.

The fixtures are small Megatron datasets cut into byte shards here, in the published layout
(``STEM-NNNNN-of-LLLLL.bin``, LLLLL the last index, every shard but the last of one size, as
Pythia's utils/shard_memmap.py writes them), beside ``STEM.idx``.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from pythia_suite import config as cfg
from pythia_suite.cli import main
from pythia_suite.data.idxmaps import IdxmapsError, shard_names, unshard
from pythia_suite.data.indexed import IndexedDatasetWriter
from pythia_suite.data.order import GPTNeoXSamples
from pythia_suite.data.preshuffled import parse_shard_hashes
from pythia_suite.data.source import num_samples, training_data
from pythia_suite.hashing import sha256_file
from pythia_suite.provenance import read_record

REPO = Path(__file__).resolve().parents[1]
STEM = "pile_0.87_deduped_text_document"


def write_documents(prefix: Path, n_docs: int = 60, seed: int = 0) -> Path:
    """A Megatron dataset of ``n_docs`` documents (uint16 tokens, each ending in EOD 0)."""
    rng = np.random.default_rng(seed)
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for _ in range(n_docs):
            tokens = rng.integers(2, 2048, size=int(rng.integers(5, 90)), dtype=np.uint16)
            writer.add_document(np.append(tokens, np.uint16(0)))
    return prefix


def shard_published(prefix: Path, out_dir: Path, shard_bytes: int) -> list[Path]:
    """Cut ``prefix.bin`` into byte shards named as the published set is, and copy the .idx
    beside them. Returns the files in ``shard_names`` order (shards, then the .idx)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = Path(f"{prefix}.bin").read_bytes()
    last = len(data) // shard_bytes  # shard_memmap.py: the `of` number is the last index
    files = []
    for i in range(last + 1):
        path = out_dir / f"{prefix.name}-{i:05d}-of-{last:05d}.bin"
        path.write_bytes(data[i * shard_bytes : (i + 1) * shard_bytes])
        files.append(path)
    idx = out_dir / f"{prefix.name}.idx"
    idx.write_bytes(Path(f"{prefix}.idx").read_bytes())
    return files + [idx]


@pytest.fixture
def published(tmp_path):
    """(original prefix, published files) of a 7-shard set (the last shard shorter)."""
    original = write_documents(tmp_path / "original" / STEM)
    size = Path(f"{original}.bin").stat().st_size
    files = shard_published(original, tmp_path / "hub", shard_bytes=size // 6)
    assert len(files) == 8 and files[-2].stat().st_size < files[0].stat().st_size
    return original, files


def overlay(tmp_path: Path, files: list[Path], original: Path, **entry) -> list[str]:
    """--config arguments: the miniature suite on idxmaps, the deduped set read from a local
    directory holding ``files``, with their sha256 and the unsharded .bin's."""
    deduped = {
        "path": str(files[0].parent),
        "stem": STEM,
        "shards": len(files) - 1,
        "sha256": {f.name: sha256_file(f) for f in files},
        "bin_sha256": sha256_file(f"{original}.bin"),
        **entry,
    }
    data = {
        "paths": {"results": str(tmp_path / "results"), "state": str(tmp_path / "state")},
        "matrix": [{"sizes": ["0.4m"], "variants": ["deduped"], "seeds": ["data-seed1"]}],
        "data": {"source": "idxmaps", "idxmaps": {"deduped": deduped}},
    }
    path = tmp_path / "idxmaps.yaml"
    path.write_text(yaml.safe_dump(data))
    files = (REPO / "config.yaml", REPO / "config" / "mini.yaml", path)
    return [a for f in files for a in ("--config", str(f))]


def fetch_all(args: list[str], results: Path, files: list[Path], variant="deduped") -> list[Path]:
    fetched = []
    for f in files:
        out = results / "data" / "idxmaps" / variant / f.name
        assert main([*args, "fetch-idxmaps", variant, f.name, "--output", str(out)]) == 0
        fetched.append(out)
    return fetched


def test_config_holds_the_84_published_shard_hashes_and_the_unsharded_sha256(anchor):
    published = parse_shard_hashes(anchor("utils/shard_hashes.txt"))
    config = cfg.load_config([REPO / "config.yaml"])
    deduped = config["data"]["idxmaps"]["deduped"]
    assert len(published) == 84
    assert deduped["sha256"] == published
    # The names the suite fetches are exactly the published ones: 83 shards, then the .idx.
    assert shard_names(deduped) == sorted(published)
    readme = anchor("README.md").read_text()
    assert f"The correct sha256 for the full file is {deduped['bin_sha256']}" in readme
    assert f"EleutherAI/{deduped['repo'].split('/')[1]}" in readme


def test_shard_names_follow_shard_memmap():
    assert shard_names({"stem": "s", "shards": 3}) == [
        "s-00000-of-00002.bin",
        "s-00001-of-00002.bin",
        "s-00002-of-00002.bin",
        "s.idx",
    ]


def test_fetch_verify_unshard_equals_the_original_and_orders_by_the_data_seed(tmp_path, published):
    original, files = published
    args = overlay(tmp_path, files, original)
    config = cfg.load_config([a for a in args if a != "--config"])
    run = cfg.get_run(config, "pythia-0.4m-deduped-data-seed1")
    fetched = fetch_all(args, tmp_path / "results", files)
    prefix = tmp_path / "results" / "data" / "datasets" / "deduped" / "deduped_text_document"
    assert main([*args, "unshard-idxmaps", "deduped", "--files", *map(str, fetched),
                 "--output-prefix", str(prefix)]) == 0  # fmt: skip
    for ext in (".bin", ".idx"):
        assert Path(f"{prefix}{ext}").read_bytes() == Path(f"{original}{ext}").read_bytes()
    record = read_record(f"{prefix}.bin")
    assert record["extra"]["bin_sha256"] == sha256_file(f"{original}.bin")
    assert [Path(i["path"]).name for i in record["inputs"]] == [f.name for f in files]
    assert read_record(fetched[0])["extra"]["sha256_configured"] == sha256_file(files[0])

    # The run's batch is GPT-NeoX's order for data seed 1 over the original dataset, built
    # by the command the workflow's build_order rule runs (batch reads only built artifacts).
    order_dir = training_data(config, run).order_dir
    assert main([*args, "build-order", "--dataset-prefix", str(prefix), "--seed", "1",
                 "--output", str(order_dir)]) == 0  # fmt: skip
    out = tmp_path / "batch.npy"
    assert main([*args, "batch", run.name, "--step", "3", "--output", str(out)]) == 0
    gb = config["training"]["global_batch"]
    expected = GPTNeoXSamples(
        original, tmp_path / "order", num_samples(config), config["model"]["seq_length"], 1
    ).batch(3, gb)
    np.testing.assert_array_equal(np.load(out), expected)
    seed1234 = GPTNeoXSamples(
        original, tmp_path / "o1234", num_samples(config), config["model"]["seq_length"], 1234
    ).batch(3, gb)
    assert not np.array_equal(expected, seed1234)


def test_unshard_equals_pythias_unshard_memmap(tmp_path, published, anchor):
    """Pythia's own utils/unshard_memmap.py, run on the same shards, writes the same .bin."""
    script = anchor("utils/unshard_memmap.py")
    original, files = published
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    subprocess.run(
        [sys.executable, str(script), "--input_file", str(files[0]),
         "--num_shards", str(len(files) - 1), "--output_dir", str(theirs)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    unshard(files[:-1], files[-1], tmp_path / "ours" / STEM)
    assert (tmp_path / "ours" / f"{STEM}.bin").read_bytes() == (theirs / f"{STEM}.bin").read_bytes()


def test_a_shard_whose_sha256_differs_is_named_and_not_kept(tmp_path, published, capsys):
    original, files = published
    args = overlay(tmp_path, files, original)
    bad = files[3]
    data = bytearray(bad.read_bytes())
    data[7] ^= 0xFF
    bad.write_bytes(bytes(data))
    out = tmp_path / "results" / "data" / "idxmaps" / "deduped" / bad.name
    assert main([*args, "fetch-idxmaps", "deduped", bad.name, "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{out}: sha256 mismatch" in err and "Traceback" not in err
    assert not out.exists() and not list(out.parent.glob(f"{bad.name}*"))


def test_unshard_refuses_a_wrong_full_file_sha256_leaving_nothing(tmp_path, published):
    original, files = published
    out = tmp_path / "out" / "deduped_text_document"
    with pytest.raises(IdxmapsError, match=r"deduped_text_document\.bin: sha256 of the unsharded"):
        unshard(files[:-1], files[-1], out, bin_sha256="0" * 64)
    assert list(out.parent.iterdir()) == []


def test_unshard_names_a_short_shard_and_an_index_that_does_not_fit(tmp_path, published):
    original, files = published
    short = files[2]
    short.write_bytes(short.read_bytes()[:-2])
    with pytest.raises(IdxmapsError, match=f"{short.name}: .* bytes, shard 0"):
        unshard(files[:-1], files[-1], tmp_path / "a" / "x")
    other = shard_published(
        write_documents(tmp_path / "other" / STEM, seed=1), tmp_path / "o", 4096
    )
    with pytest.raises(IdxmapsError, match=f"{files[-1]}: does not describe the"):
        unshard(other[:-1], files[-1], tmp_path / "b" / "x")  # another set's shards
    assert not (tmp_path / "b" / "x.bin").exists() and not (tmp_path / "b" / "x.idx").exists()


def test_standard_set_without_hashes_records_them_at_first_use(tmp_path, published, capsys):
    """The standard set has no published hashes: each file's sha256 is recorded and reported."""
    original, files = published
    args = overlay(tmp_path, files, original)
    extra = tmp_path / "standard.yaml"
    entry = {"path": str(files[0].parent), "stem": STEM, "shards": len(files) - 1}
    extra.write_text(yaml.safe_dump({
        "matrix": [{"sizes": ["0.4m"], "variants": ["standard"], "seeds": ["seed3"]}],
        "data": {"idxmaps": {"standard": entry}},
    }))  # fmt: skip
    args += ["--config", str(extra)]
    fetched = fetch_all(args, tmp_path / "results", files, variant="standard")
    err = capsys.readouterr().err
    assert f"sha256.{files[0].name}: none; recorded {sha256_file(files[0])} at first use" in err
    record = read_record(fetched[0])
    assert record["sha256"] == sha256_file(files[0])
    assert record["extra"]["sha256_configured"] is None


def test_a_variant_without_a_set_is_refused_naming_the_key(tmp_path, published):
    original, files = published
    args = overlay(tmp_path, files, original)
    extra = tmp_path / "standard.yaml"
    extra.write_text("matrix:\n  - {sizes: [0.4m], variants: [standard], seeds: [default]}\n")
    with pytest.raises(cfg.ConfigError, match=r"data\.idxmaps\.standard: no pre-tokenized set"):
        cfg.load_config([a for a in args if a != "--config"] + [extra])


class _HubFiles(http.server.BaseHTTPRequestHandler):
    """Serves a directory as the Hub serves a dataset repo's files
    (``/datasets/{repo}/resolve/{revision}/{name}``), honouring ``Range: bytes=N-``."""

    root = Path()
    prefix = ""
    ranges: list = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        name = self.path.removeprefix(self.prefix)
        path = self.root / name
        if not self.path.startswith(self.prefix) or "/" in name or not path.is_file():
            self.send_error(404)
            return
        payload = path.read_bytes()
        start = int(self.headers.get("Range", "bytes=0-").removeprefix("bytes=").rstrip("-"))
        self.ranges.append((name, start))
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/*")
        self.send_header("Content-Length", str(len(payload) - start))
        self.end_headers()
        self.wfile.write(payload[start:])

    def log_message(self, *args):
        pass


def test_files_come_from_the_hub_url_and_an_interrupted_download_resumes(tmp_path, published):
    original, files = published
    repo = "EleutherAI/pythia_deduped_pile_idxmaps"
    handler = type(
        "H", (_HubFiles,), {"root": files[0].parent, "prefix": f"/datasets/{repo}/resolve/main/",
                            "ranges": []},
    )  # fmt: skip
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hub = f"http://127.0.0.1:{server.server_address[1]}"
        args = overlay(tmp_path, files, original, path=None)
        extra = tmp_path / "hub.yaml"
        extra.write_text(yaml.safe_dump({"data": {"idxmaps": {"hub_url": hub}}}))
        args += ["--config", str(extra)]
        out = tmp_path / "results" / "data" / "idxmaps" / "deduped" / files[0].name
        out.parent.mkdir(parents=True)
        out.with_name(out.name + ".part").write_bytes(files[0].read_bytes()[:100])  # interrupted
        assert main([*args, "fetch-idxmaps", "deduped", files[0].name, "--output", str(out)]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert handler.ranges == [(files[0].name, 100)]
    assert out.read_bytes() == files[0].read_bytes()
    assert (
        read_record(out)["extra"]["source"] == f"{hub}/datasets/{repo}/resolve/main/{files[0].name}"
    )
