"""The write helpers leave nothing partial under a final name; the JSON reader names the file."""

from __future__ import annotations

import os

import pytest

from pythia_suite.atomic import (
    atomic_directory,
    atomic_path,
    atomic_paths,
    replace_symlink,
    write_json_atomic,
    write_text_atomic,
)
from pythia_suite.jsonfile import JSONFileError, read_json


def test_atomic_path_renames_on_success_and_removes_on_error(tmp_path):
    final = tmp_path / "sub" / "data.bin"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".data.bin.")
        tmp.write_bytes(b"whole")
        assert not final.exists()
    assert final.read_bytes() == b"whole"

    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert final.read_bytes() == b"whole"
    assert sorted(p.name for p in final.parent.iterdir()) == ["data.bin"]


def test_atomic_paths_renames_in_order_and_all_or_none_on_error(tmp_path):
    bin_, idx = tmp_path / "d.bin", tmp_path / "d.idx"
    with pytest.raises(ValueError), atomic_paths(bin_, idx) as (tmp_bin, tmp_idx):
        tmp_bin.write_bytes(b"b")
        tmp_idx.write_bytes(b"i")
        raise ValueError
    assert list(tmp_path.iterdir()) == []

    with atomic_paths(bin_, idx) as (tmp_bin, tmp_idx):
        tmp_bin.write_bytes(b"b")
        tmp_idx.write_bytes(b"i")
    # the index (the marker of a complete pair) is renamed last
    assert bin_.stat().st_mtime_ns <= idx.stat().st_mtime_ns
    assert (bin_.read_bytes(), idx.read_bytes()) == (b"b", b"i")


def test_write_text_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = write_text_atomic(tmp_path / "a.txt", "old")

    with pytest.raises(TypeError):
        write_text_atomic(path, 42)  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_replace_symlink_swaps_and_keeps_relative_targets(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    link = tmp_path / "current"
    replace_symlink(link, "v1")
    assert os.readlink(link) == "v1"
    replace_symlink(link, tmp_path / "v2")
    assert os.readlink(link) == str(tmp_path / "v2") and link.resolve() == tmp_path / "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v1", "v2"]


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(KeyError), atomic_directory(target) as tmp:
        (tmp / "b").write_text("2")
        raise KeyError
    assert [p.name for p in target.iterdir()] == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_read_json_names_the_file_line_and_column(tmp_path):
    good = write_json_atomic(tmp_path / "good.json", {"a": 1})
    assert read_json(good, kind=dict) == {"a": 1}

    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n "b": }')
    with pytest.raises(JSONFileError, match=r"bad\.json: not valid JSON: .*\(line 2, column 7\)"):
        read_json(bad)

    with pytest.raises(JSONFileError, match=r"good\.json: expected a JSON array, found dict"):
        read_json(good, kind=list)

    latin = tmp_path / "latin.json"
    latin.write_bytes(b'"\xe9"')
    with pytest.raises(JSONFileError, match=r"latin\.json: not UTF-8"):
        read_json(latin)

    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "absent.json")
    assert read_json(tmp_path / "absent.json", missing=None) is None


def test_a_caller_keeps_its_error_type_and_the_readers_message(tmp_path):
    from pythia_suite.train.checkpoint import CheckpointError, read_trainer_state

    (tmp_path / "trainer_state.json").write_text("[1, 2,")
    with pytest.raises(CheckpointError, match=r"trainer_state\.json: not valid JSON: .*line 1"):
        read_trainer_state(tmp_path)
    (tmp_path / "trainer_state.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"trainer_state\.json: expected a JSON object"):
        read_trainer_state(tmp_path)
