#!/usr/bin/env python3
"""Build the miniature suite's corpus, ``data/mini-pile/``, in the Pile's format.

Output (deterministic: the same packages give byte-identical files)::

    data/mini-pile/train/00.jsonl.zst, 01.jsonl.zst   training shards
    data/mini-pile/heldout/heldout.jsonl.zst          held-out documents (none also in train)
    data/mini-pile/manifest.json                      file -> sha256, documents, bytes; packages
    data/mini-pile/SOURCES.md                         sources, package versions, licences

One JSON document per line, ``{"text": ..., "meta": {"pile_set_name": ...}}``, zstd level 19 with
frame checksums. Sources are Debian 12 packages, downloaded (not installed) with
``apt-get download`` and unpacked with ``dpkg-deb -x``:

* Gutenberg (PG-19): the King James Bible (bible-kjv-text, read with bible-kjv's ``bible``
  program), one document per chapter; public domain.
* Jargon: the Jargon File 4.4.7 (jargon-text): chapters, appendix sections, and glossary
  entries grouped into documents of ~600+ words; public domain.
* Python docs: reStructuredText sources of the Python 3.11 documentation (python3.11-doc), one
  document per page, long pages split at section headings; PSF licence.
* Devil's Dictionary: Ambrose Bierce (dict-devil), entries grouped into ~500+ word documents;
  public domain.
* Licenses: ``/usr/share/common-licenses/*`` (base-files) and the ``copyright`` file of every
  package used. Many packages share one copyright file (exact duplicates) and licence versions
  differ slightly (LGPL-2 / LGPL-2.1, GFDL-1.2 / 1.3, glib's two packagings): real near-duplicates
  for the dedup stage. Each text keeps its own licence (it is the licence text itself).

Requires: a Debian/Ubuntu system with ``apt-get`` (package lists present: run ``apt-get update``
once) and ``dpkg-deb``; network access to the Debian mirror; no root needed for download.
Rerunnable: downloaded ``.deb`` files are kept in ``--work`` (default ``work/mini-corpus``,
git-ignored) and reused; outputs are written to temporary names and renamed when complete.

Usage: ``python scripts/build_mini_corpus.py [--out data/mini-pile] [--work build/mini-corpus]``
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parents[1]

CORPUS_PACKAGES = ["bible-kjv", "bible-kjv-text", "dict-devil", "jargon-text", "python3.11-doc"]
# Packages taken only for their copyright files: pairs built from one source share a file.
LICENCE_PACKAGES = [
    "base-files",  # /usr/share/common-licenses
    "gir1.2-glib-2.0",
    "libgirepository-1.0-1",
    "libglib2.0-0",
    "libglib2.0-data",
    "libgnutls-openssl27",
    "libgnutls30",
    "libk5crypto3",
    "libkrb5-3",
    "libldap-2.5-0",
    "libldap-common",
    "python3.11-minimal",
]
PYTHON_DOC_SECTIONS = ["extending", "faq", "howto", "library", "reference", "tutorial", "using"]
PYTHON_DOC_FILES = ["glossary.rst.txt"]

ZSTD_LEVEL = 19
TRAIN_SHARDS = 2
HELDOUT_PER_MILLE = 40  # ~4% of the non-licence documents
SHUFFLE_SEED = 1234
MAX_WORDS = 3000  # longer Python pages are split at section headings
GROUP_WORDS = {"Jargon": 600, "Devil's Dictionary": 500}


@dataclass(frozen=True)
class Document:
    doc_id: str  # stable identifier, e.g. "bible/Genesis 1"; used for the split, not written
    text: str
    pile_set_name: str


def fail(message: str) -> None:
    sys.exit(f"build_mini_corpus: {message}")


def check_tools() -> None:
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            fail(f"'{tool}' not found: this script needs Debian's apt-get and dpkg-deb")


def download(packages: list[str], debs: Path) -> dict[str, Path]:
    """``apt-get download`` each package into ``debs`` unless a .deb for it is already there."""
    debs.mkdir(parents=True, exist_ok=True)
    found = {}
    for name in packages:
        existing = sorted(debs.glob(f"{name}_*.deb"))
        if not existing:
            result = subprocess.run(
                ["apt-get", "download", name], cwd=debs, capture_output=True, text=True
            )
            if result.returncode != 0:
                fail(
                    f"apt-get download {name} failed (run 'apt-get update' first?):\n"
                    + result.stderr.strip()
                )
            existing = sorted(debs.glob(f"{name}_*.deb"))
        if len(existing) != 1:
            fail(f"expected one {name}_*.deb in {debs}, found {[p.name for p in existing]}")
        found[name] = existing[0]
    return found


def extract(deb: Path, root: Path) -> Path:
    target = root / deb.stem
    if not target.exists():
        tmp = root / (deb.stem + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        os.replace(tmp, target)
    return target


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), field], check=True, capture_output=True, text=True
    ).stdout.strip()


def words(text: str) -> int:
    return len(text.split())


def group_by_words(pieces: list[tuple[str, str]], minimum: int, prefix: str, name: str):
    """Concatenate consecutive (key, text) pieces into documents of at least ``minimum`` words."""
    docs, batch = [], []
    for key, text in pieces:
        batch.append((key, text))
        if sum(words(t) for _, t in batch) >= minimum:
            docs.append(Document(f"{prefix}/{batch[0][0]}", "\n\n".join(t for _, t in batch), name))
            batch = []
    if batch:
        docs.append(Document(f"{prefix}/{batch[0][0]}", "\n\n".join(t for _, t in batch), name))
    return docs


def bible_documents(bible_root: Path, text_root: Path) -> list[Document]:
    """One document per chapter, verses one per line (``N text``)."""
    result = subprocess.run(
        [
            str(bible_root / "usr/bin/bible"),
            "-p",
            str(text_root / "usr/lib"),
            "-l100000",
            "gen1:1-rev22:21",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    docs, title, verses = [], None, []
    for line in result.stdout.splitlines() + [""]:
        verse = re.match(r"\s+(\d+) (.*)", line)
        if verse:
            verses.append(f"{verse.group(1)} {verse.group(2).strip()}")
        elif line.strip():
            if title and verses:
                docs.append(_chapter(title, verses))
            title, verses = line.strip(), []
    if title and verses:
        docs.append(_chapter(title, verses))
    if len(docs) != 1189:
        fail(f"expected the Bible's 1189 chapters from 'bible', got {len(docs)}")
    return docs


def _chapter(title: str, verses: list[str]) -> Document:
    return Document(f"bible/{title}", title + "\n\n" + "\n".join(verses), "Gutenberg (PG-19)")


def _dedent(lines: list[str]) -> str:
    text = "\n".join(line[3:] if line.startswith("   ") else line for line in lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def jargon_documents(root: Path) -> list[Document]:
    """Chapters and appendix sections whole; glossary entries grouped."""
    lines = gzip.decompress((root / "usr/share/doc/jargon-text/jargon.txt.gz").read_bytes())
    # The text uses no-break spaces in headings ("Chapter\u00a01."): plain spaces are simpler.
    lines = lines.decode("utf-8").replace("\u00a0", " ").split("\n")
    glossary = lines.index("Glossary")  # the unindented heading, after the table of contents
    appendix = next(i for i, ln in enumerate(lines) if ln.startswith("Appendix A."))
    first_chapter = next(i for i, ln in enumerate(lines) if ln.startswith("Chapter 1."))
    docs = []
    # Chapters and appendices: sections start at unindented heading lines (tables excluded).
    for start, stop in ((first_chapter, glossary), (appendix, len(lines))):
        heading, body = None, []
        for line in lines[start:stop] + ["END"]:
            if line and not line[0].isspace() and line[0] not in "│├┌└":
                if heading and words(" ".join(body)) >= 50:
                    docs.append(
                        Document(f"jargon/{heading}", heading + "\n\n" + _dedent(body), "Jargon")
                    )
                heading, body = line.strip(), []
            else:
                body.append(line)
    # Glossary: entries start with "   :term: ..."; letter headings and their tables of
    # contents ("  A", then the entry names) are skipped.
    entries, current = [], None
    for line in lines[glossary + 1 : appendix]:
        entry = re.match(r"   :(.+?):", line)
        if entry:
            if current:
                entries.append((current[0], _dedent(current[1])))
            current = (entry.group(1), [line])
        elif re.match(r"  \S", line):
            if current:
                entries.append((current[0], _dedent(current[1])))
            current = None
        elif current:
            current[1].append(line)
    if current:
        entries.append((current[0], _dedent(current[1])))
    if len(entries) < 2000:
        fail(f"expected over 2000 Jargon File entries, parsed {len(entries)}")
    return docs + group_by_words(entries, GROUP_WORDS["Jargon"], "jargon", "Jargon")


_RST_UNDERLINE = re.compile(r"^([=\-~^*#\"'+`])\1{2,}\s*$")


def _pack(blocks: list[str], limit: int, joiner: str) -> list[str]:
    """Concatenate consecutive blocks into parts of at most ``limit`` words where possible."""
    parts, current = [], ""
    for block in blocks:
        if current and words(current) + words(block) > limit:
            parts.append(current)
            current = ""
        current += (joiner if current else "") + block
    if current:
        parts.append(current)
    return parts


def _split_rst(text: str, limit: int) -> list[str]:
    """Split a page into parts of at most ``limit`` words: at section headings (a line underlined
    with =, -, ~ ...), and a section longer than the limit at blank lines. Parts under 50 words
    (stubs, index pages) are dropped."""
    lines = text.split("\n")
    starts = [0] + [
        i - 1
        for i in range(2, len(lines))
        if _RST_UNDERLINE.match(lines[i]) and lines[i - 1].strip() and len(lines[i]) >= 3
    ]
    ends = starts[1:] + [len(lines)]
    blocks = []
    for a, b in zip(starts, ends, strict=True):
        section = "\n".join(lines[a:b])
        if words(section) > limit:
            blocks += _pack(section.split("\n\n"), limit, "\n\n")
        else:
            blocks.append(section)
    return [p.strip() for p in _pack(blocks, limit, "\n") if words(p) >= 50]


def python_doc_documents(root: Path) -> list[Document]:
    sources = root / "usr/share/doc/python3.11/html/_sources"
    files = [sources / f for f in PYTHON_DOC_FILES]
    for section in PYTHON_DOC_SECTIONS:
        files += sorted((sources / section).rglob("*.rst.txt"))
    docs = []
    for path in sorted(files):
        rel = path.relative_to(sources).as_posix().removesuffix(".rst.txt")
        for i, part in enumerate(_split_rst(path.read_text(encoding="utf-8"), MAX_WORDS)):
            docs.append(Document(f"pydoc/{rel}#{i}", part, "Python docs"))
    return docs


def _dict_number(value: str) -> int:
    """dictd's index numbers: base64 digits, most significant first."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    number = 0
    for char in value:
        number = number * 64 + alphabet.index(char)
    return number


def devil_documents(root: Path) -> list[Document]:
    data = gzip.decompress((root / "usr/share/dictd/devil.dict.dz").read_bytes())
    entries = []
    for line in (root / "usr/share/dictd/devil.index").read_text(encoding="utf-8").splitlines():
        head, offset, length = line.split("\t")
        if head.startswith("00database") and head != "00databaseinfo":
            continue
        start = _dict_number(offset)
        text = data[start : start + _dict_number(length)].decode("utf-8").strip()
        entries.append((start, head, text))
    entries.sort()
    pieces = [(head, text) for _, head, text in entries]
    name = "Devil's Dictionary"
    return group_by_words(pieces, GROUP_WORDS[name], "devil", name)


def licence_documents(roots: dict[str, Path]) -> list[Document]:
    docs = []
    common = roots["base-files"] / "usr/share/common-licenses"
    for path in sorted(common.iterdir()):
        if path.is_symlink():  # GPL -> GPL-3 etc.: the same file under another name
            continue
        docs.append(Document(f"licenses/common/{path.name}", path.read_text().strip(), "Licenses"))
    for name in sorted(roots):
        copyright_file = roots[name] / "usr/share/doc" / name / "copyright"
        if copyright_file.is_file() and not copyright_file.is_symlink():
            text = copyright_file.read_text(encoding="utf-8", errors="replace").strip()
            docs.append(Document(f"licenses/copyright/{name}", text, "Licenses"))
    return docs


def is_heldout(doc: Document) -> bool:
    digest = hashlib.sha256(doc.doc_id.encode()).digest()
    return doc.pile_set_name != "Licenses" and int.from_bytes(digest[:4]) % 1000 < HELDOUT_PER_MILLE


def split(docs: list[Document]) -> tuple[list[list[Document]], list[Document]]:
    """Held-out documents (never licences; none whose text is also in train) and shuffled
    training shards."""
    heldout = [d for d in docs if is_heldout(d)]
    train = [d for d in docs if not is_heldout(d)]
    train_texts = {d.text for d in train}
    heldout = [d for d in heldout if d.text not in train_texts]
    train.sort(key=lambda d: d.doc_id)
    random.Random(SHUFFLE_SEED).shuffle(train)
    shards = [train[i::TRAIN_SHARDS] for i in range(TRAIN_SHARDS)]
    heldout.sort(key=lambda d: d.doc_id)
    return shards, heldout


def write_shard(docs: list[Document], path: Path) -> dict:
    lines = "".join(
        json.dumps({"text": d.text, "meta": {"pile_set_name": d.pile_set_name}}) + "\n"
        for d in docs
    ).encode("utf-8")
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, threads=0)
    payload = cctx.compress(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)
    counts: dict[str, int] = {}
    for d in docs:
        counts[d.pile_set_name] = counts.get(d.pile_set_name, 0) + 1
    return {
        "sha256": hashlib.sha256(payload).hexdigest(),
        "documents": len(docs),
        "bytes": len(payload),
        "text_bytes": len(lines),
        "words": sum(words(d.text) for d in docs),
        "pile_set_names": dict(sorted(counts.items())),
    }


SOURCE_TABLE = [
    (
        "Gutenberg (PG-19)",
        "bible-kjv-text, bible-kjv",
        "King James Bible, one document per chapter",
        "public domain",
    ),
    (
        "Jargon",
        "jargon-text",
        "The Jargon File 4.4.7: chapters, appendix sections, glossary entries grouped",
        "public domain",
    ),
    (
        "Python docs",
        "python3.11-doc",
        "Python 3.11 documentation sources (`_sources/**/*.rst.txt`: "
        + ", ".join(PYTHON_DOC_SECTIONS)
        + ", glossary)",
        "PSF License Agreement (Python 3.11)",
    ),
    (
        "Devil's Dictionary",
        "dict-devil",
        "Ambrose Bierce, The Devil's Dictionary (1911), entries grouped",
        "public domain",
    ),
    (
        "Licenses",
        "base-files + the packages listed below",
        "`/usr/share/common-licenses/*` and each package's `copyright` file",
        "each is the licence text itself (verbatim copying permitted)",
    ),
]


def write_sources_md(path: Path, manifest: dict) -> None:
    lines = [
        "# mini-pile: sources",
        "",
        "Built by `scripts/build_mini_corpus.py` from Debian 12 packages (downloaded with",
        "`apt-get download`, unpacked with `dpkg-deb -x`, never installed). Rebuild:",
        "`python scripts/build_mini_corpus.py` (needs `apt-get`, `dpkg-deb`, the Debian mirror).",
        "Same packages -> byte-identical files; `manifest.json` holds every file's sha256.",
        "",
        "| pile_set_name | package(s) | content | licence |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in SOURCE_TABLE]
    lines += [
        "",
        "Held-out shard: about 4% of the non-licence documents, chosen by a hash of each",
        "document's source id; no held-out text also occurs in the training shards. Licence",
        "texts recur across packages unchanged (exact duplicates) or nearly (near-duplicates),",
        "and stay in training on purpose: they exercise the dedup stage.",
        "",
        "## Packages",
        "",
        "| package | version | .deb sha256 | used for |",
        "|---|---|---|---|",
    ]
    for name, info in manifest["packages"].items():
        lines.append(
            f"| {name} | {info['version']} | `{info['deb_sha256'][:16]}…` | {info['used_for']} |"
        )
    lines += [
        "",
        "## Files",
        "",
        "| file | documents | words | bytes | sha256 |",
        "|---|---|---|---|---|",
    ]
    for name, info in manifest["files"].items():
        lines.append(
            f"| {name} | {info['documents']} | {info['words']} | {info['bytes']} "
            f"| `{info['sha256'][:16]}…` |"
        )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "data/mini-pile")
    parser.add_argument("--work", type=Path, default=REPO / "work/mini-corpus")
    args = parser.parse_args()
    check_tools()

    debs = download(CORPUS_PACKAGES + LICENCE_PACKAGES, args.work / "debs")
    roots = {name: extract(deb, args.work / "root") for name, deb in debs.items()}
    docs = (
        bible_documents(roots["bible-kjv"], roots["bible-kjv-text"])
        + jargon_documents(roots["jargon-text"])
        + python_doc_documents(roots["python3.11-doc"])
        + devil_documents(roots["dict-devil"])
        + licence_documents(roots)
    )
    ids = [d.doc_id for d in docs]
    if len(set(ids)) != len(ids):
        fail("duplicate document ids (parser bug)")
    shards, heldout = split(docs)

    files = {}
    for i, shard in enumerate(shards):
        files[f"train/{i:02d}.jsonl.zst"] = write_shard(
            shard, args.out / f"train/{i:02d}.jsonl.zst"
        )
    files["heldout/heldout.jsonl.zst"] = write_shard(
        heldout, args.out / "heldout/heldout.jsonl.zst"
    )
    used_for = {name: "text" for name in CORPUS_PACKAGES}
    used_for.update({name: "licence texts" for name in LICENCE_PACKAGES})
    manifest = {
        "format": "Pile JSON Lines, zstd level 19 with checksums",
        "files": files,
        "packages": {
            name: {
                "version": deb_field(deb, "Version"),
                "deb": deb.name,
                "deb_sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
                "used_for": used_for[name]
                + (" + copyright file" if used_for[name] == "text" else ""),
            }
            for name, deb in sorted(debs.items())
        },
    }
    tmp = args.out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, args.out / "manifest.json")
    write_sources_md(args.out / "SOURCES.md", manifest)

    total = sum(f["bytes"] for f in files.values())
    for name, info in files.items():
        print(
            f"{name}: {info['documents']} documents, {info['words']:,} words, "
            f"{info['bytes']:,} bytes"
        )
    print(f"total compressed: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
