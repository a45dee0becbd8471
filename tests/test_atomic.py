"""Atomic writes: the output appears whole or not at all, with the mode a plain open() would give it."""

from __future__ import annotations

import os
import stat

import pytest

from seqcompress.atomic import atomic_open, atomic_write_text


def test_output_gets_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "out.txt", "hello")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o644
    assert (tmp_path / "out.txt").read_text() == "hello"


def test_a_failed_write_leaves_neither_output_nor_temporary_file(tmp_path):
    (tmp_path / "out.txt").write_text("before")
    with pytest.raises(RuntimeError):
        with atomic_open(tmp_path / "out.txt", "w", encoding="utf-8") as handle:
            handle.write("half")
            raise RuntimeError("interrupted")
    assert (tmp_path / "out.txt").read_text() == "before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
