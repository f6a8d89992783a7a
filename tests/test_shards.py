"""Tests for pythia_suite.data.shards: reading Pile shards, hashing, fetching with resume."""

from __future__ import annotations

import hashlib
import http.server
import json
import random
import string
import threading
from pathlib import Path

import pytest
import zstandard

from pythia_suite.data.shards import (
    ChecksumError,
    DataFormatError,
    fetch_shard,
    iter_documents,
)
from pythia_suite.hashing import sha256_file

DOCS = [
    {"text": f"document {i} " + "word " * i, "meta": {"pile_set_name": "Test"}} for i in range(200)
]


def _jsonl(docs) -> bytes:
    return b"".join(json.dumps(d).encode() + b"\n" for d in docs)


def _write_zst(path: Path, data: bytes, frames: int = 1) -> Path:
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
    step = -(-len(data) // frames)
    path.write_bytes(b"".join(cctx.compress(data[i : i + step]) for i in range(0, len(data), step)))
    return path


def test_reads_plain_and_zstd_identically(tmp_path):
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(_jsonl(DOCS))
    zst = _write_zst(tmp_path / "a.jsonl.zst", _jsonl(DOCS))
    assert list(iter_documents(plain)) == list(iter_documents(zst))
    assert [d for _, d in iter_documents(zst)] == DOCS
    assert [n for n, _ in iter_documents(zst)] == list(range(1, len(DOCS) + 1))


def test_reads_multi_frame_zstd(tmp_path):
    # Frames split mid-line: lines must be reassembled across frame boundaries.
    zst = _write_zst(tmp_path / "m.jsonl.zst", _jsonl(DOCS), frames=7)
    assert [d for _, d in iter_documents(zst)] == DOCS


def test_blank_lines_are_skipped_but_counted(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert list(iter_documents(path)) == [(1, {"text": "a"}), (3, {"text": "b"})]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"meta": {}}', 'no string "text" (found: missing)'),
        (b'{"text": 5}', 'no string "text" (found: int)'),
        (b'["text"]', "expected a JSON object"),
        (b'{"text": "\xff"}', "invalid UTF-8"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, line, reason):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(_jsonl(DOCS[:3]) + line + b"\n" + _jsonl(DOCS[:1]))
    with pytest.raises(DataFormatError) as info:
        list(iter_documents(path))
    assert info.value.line == 4
    assert info.value.path == str(path)
    assert reason in str(info.value) and str(path) in str(info.value)


def test_truncated_zstd_names_last_good_line(tmp_path):
    # Incompressible text, so that half the compressed bytes decode to many complete lines.
    rng = random.Random(0)
    docs = [{"text": "".join(rng.choices(string.ascii_letters, k=500))} for _ in range(2000)]
    full = _write_zst(tmp_path / "t.jsonl.zst", _jsonl(docs)).read_bytes()
    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(full[: len(full) // 2])
    seen = []
    with pytest.raises(DataFormatError, match="truncated zstd stream") as info:
        for line_no, _ in iter_documents(cut):
            seen.append(line_no)
    assert 0 < info.value.line == seen[-1] < len(docs)


def test_corrupt_zstd_is_an_error(tmp_path):
    data = bytearray(_write_zst(tmp_path / "c.jsonl.zst", _jsonl(DOCS)).read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "corrupt.jsonl.zst"
    bad.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match="zstd stream") as info:
        list(iter_documents(bad))
    assert info.value.path == str(bad)


def test_sha256_file(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc" * 1000)
    assert sha256_file(path) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_fetch_local_copy_and_verify(tmp_path):
    src = tmp_path / "src.jsonl"
    src.write_bytes(_jsonl(DOCS))
    digest = fetch_shard(src, tmp_path / "out" / "a.jsonl")
    assert digest == sha256_file(src)
    assert (tmp_path / "out" / "a.jsonl").read_bytes() == src.read_bytes()
    # Second fetch with a matching checksum is a no-op that returns the same digest.
    assert fetch_shard(src, tmp_path / "out" / "a.jsonl", sha256=digest.upper()) == digest


def test_fetch_checksum_mismatch_removes_file(tmp_path):
    src = tmp_path / "src.jsonl"
    src.write_bytes(b'{"text": "x"}\n')
    dest = tmp_path / "dest.jsonl"
    with pytest.raises(ChecksumError) as info:
        fetch_shard(src, dest, sha256="0" * 64)
    assert info.value.expected == "0" * 64 and info.value.actual == sha256_file(src)
    assert str(dest) in str(info.value)
    assert not dest.exists() and not (tmp_path / "dest.jsonl.part").exists()


def test_fetch_missing_local_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        fetch_shard(tmp_path / "nope", tmp_path / "dest")


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload, honouring ``Range: bytes=N-`` unless ``ignore_range`` is set."""

    payload = b""
    ignore_range = False
    requests: list = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.requests.append(self.headers.get("Range"))
        if self.path != "/shard.jsonl.zst":
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        start = 0
        if rng and not self.ignore_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(self.payload):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/*")
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    payload = zstandard.ZstdCompressor(level=1).compress(_jsonl(DOCS * 50))
    handler = type("H", (_RangeHandler,), {"payload": payload, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_fetch_url_resumes_partial_download(tmp_path, http_server):
    base, handler = http_server
    payload = handler.payload
    dest = tmp_path / "shard.jsonl.zst"
    (tmp_path / "shard.jsonl.zst.part").write_bytes(payload[:1000])  # an interrupted download
    expected = hashlib.sha256(payload).hexdigest()
    assert fetch_shard(f"{base}/shard.jsonl.zst", dest, sha256=expected) == expected
    assert handler.requests == ["bytes=1000-"]
    assert dest.read_bytes() == payload
    assert not (tmp_path / "shard.jsonl.zst.part").exists()
    assert len(list(iter_documents(dest))) == len(DOCS) * 50


def test_fetch_url_restarts_when_server_ignores_range(tmp_path, http_server):
    base, handler = http_server
    handler.ignore_range = True
    dest = tmp_path / "shard.jsonl.zst"
    (tmp_path / "shard.jsonl.zst.part").write_bytes(b"garbage" * 10)
    digest = fetch_shard(f"{base}/shard.jsonl.zst", dest)
    assert digest == hashlib.sha256(handler.payload).hexdigest()
    assert dest.read_bytes() == handler.payload


def test_fetch_url_complete_part_and_bad_checksum(tmp_path, http_server):
    base, handler = http_server
    dest = tmp_path / "shard.jsonl.zst"
    # A .part holding every byte: the server answers 416 and the checksum decides.
    (tmp_path / "shard.jsonl.zst.part").write_bytes(handler.payload)
    with pytest.raises(ChecksumError, match="expected f+"):
        fetch_shard(f"{base}/shard.jsonl.zst", dest, sha256="f" * 64)
    assert not dest.exists() and not (tmp_path / "shard.jsonl.zst.part").exists()


def test_fetch_url_http_error(tmp_path, http_server):
    base, _ = http_server
    with pytest.raises(OSError, match="HTTP 404"):
        fetch_shard(f"{base}/missing", tmp_path / "m")
    assert not (tmp_path / "m").exists()


MINI_PILE = Path(__file__).resolve().parents[1] / "data" / "mini-pile"


def test_shipped_mini_pile_matches_manifest_and_heldout_is_disjoint():
    manifest = json.loads((MINI_PILE / "manifest.json").read_text())
    assert sorted(manifest["files"]) == [
        "heldout/heldout.jsonl.zst",
        "train/00.jsonl.zst",
        "train/01.jsonl.zst",
    ]
    texts = {"train": set(), "heldout": set()}
    for name, info in manifest["files"].items():
        path = MINI_PILE / name
        assert sha256_file(path) == info["sha256"], f"{path} differs from manifest.json"
        docs = [doc for _, doc in iter_documents(path)]
        assert len(docs) == info["documents"] and path.stat().st_size == info["bytes"]
        assert all(doc["text"] and doc["meta"]["pile_set_name"] for doc in docs)
        texts[name.split("/")[0]] |= {doc["text"] for doc in docs}
    assert texts["heldout"] and not texts["heldout"] & texts["train"]
