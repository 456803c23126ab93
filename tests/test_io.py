"""Crash-safe writes: whole files only, the usual permissions, no temp files left behind."""

import os
import stat

import pytest

from autonad_edge.io import atomic_write_bytes, atomic_write_json, json_safe


def test_atomic_write_replaces_whole_file_with_umask_permissions(tmp_path):
    path = tmp_path / "sub" / "report.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2, "nan": json_safe(float("nan"))})
    assert path.read_text() == '{\n  "a": 2,\n  "nan": null\n}\n'
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "table.bin"
    atomic_write_bytes(path, b"old")


    with pytest.raises(TypeError):
        atomic_write_bytes(path, object())  # not bytes: the write fails part-way
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.bin"]
