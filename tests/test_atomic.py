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


# ---- whole directories: the exchange, and the two fallbacks --------------------------------------------
import errno  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

from seqcompress import atomic  # noqa: E402
from seqcompress.atomic import atomic_directory  # noqa: E402


def _write_model(directory, version: str) -> None:
    with atomic_directory(directory, carry_over=True, drop=("checkpoint",)) as stage:
        (stage / "config.json").write_text(version)
        (stage / "model.safetensors").write_text(version * 3)


def _state(directory) -> tuple[str, str]:
    return (directory / "config.json").read_text(), (directory / "model.safetensors").read_text()


def test_a_directory_is_replaced_whole_keeping_other_entries_and_its_mode(tmp_path):
    _write_model(tmp_path / "m", "a")
    (tmp_path / "m" / "notes.txt").write_text("mine")
    (tmp_path / "m" / "checkpoint").mkdir()
    os.chmod(tmp_path / "m", 0o750)
    _write_model(tmp_path / "m", "b")
    assert _state(tmp_path / "m") == ("b", "bbb") and (tmp_path / "m" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "m" / "checkpoint").exists() and stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o750
    assert sorted(os.listdir(tmp_path)) == ["m"]


@pytest.mark.parametrize("how", ["no exchange", "directory cannot be renamed"])
def test_the_fallbacks_replace_the_files_too(tmp_path, monkeypatch, how):
    _write_model(tmp_path / "m", "a")
    if how == "no exchange":
        monkeypatch.setattr(atomic, "_renameat2", lambda *a: False)
    else:
        def busy(stage, path):
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        monkeypatch.setattr(atomic, "_swap_in", busy)
    _write_model(tmp_path / "m", "b")
    assert _state(tmp_path / "m") == ("b", "bbb")
    assert sorted(os.listdir(tmp_path)) == ["m"] and sorted(os.listdir(tmp_path / "m")) == ["config.json",
                                                                                           "model.safetensors"]


_KILLED_SAVE = textwrap.dedent("""
    import errno, sys
    from pathlib import Path
    from seqcompress import atomic
    if sys.argv[2] == "busy":
        def busy(stage, path):
            raise OSError(errno.EBUSY, "busy", str(path))
        atomic._swap_in = busy
    else:
        atomic._renameat2 = lambda *a: False
    with atomic.atomic_directory(Path(sys.argv[1])) as stage:
        (stage / "config.json").write_text("b")
        (stage / "model.safetensors").write_text("bbb")
""")


def test_a_kill_inside_the_in_place_commit_is_completed_by_the_next_load(tmp_path):
    from seqcompress.model import read_model_meta
    from seqcompress.errors import ModelFileError

    _write_model(tmp_path / "m", "a")
    env = {**os.environ, "SEQCOMPRESS_KILL_AT": "commit:recorded"}
    done = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(tmp_path / "m"), "busy"], env=env)
    assert done.returncode == -signal.SIGKILL and (tmp_path / "m" / ".sqz-commit").is_file()
    with pytest.raises(ModelFileError, match="config.json is not valid JSON"):  # "b" is no config, but...
        read_model_meta(tmp_path / "m")
    assert _state(tmp_path / "m") == ("b", "bbb")  # ...the load finished the commit first
    assert sorted(os.listdir(tmp_path / "m")) == ["config.json", "model.safetensors"]


def test_a_kill_between_the_two_renames_names_the_kept_copy(tmp_path):
    from seqcompress.model import read_model_meta
    from seqcompress.errors import ModelFileError

    _write_model(tmp_path / "m", "a")
    env = {**os.environ, "SEQCOMPRESS_KILL_AT": "swap:old-moved-aside"}
    done = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(tmp_path / "m"), "no exchange"], env=env)
    assert done.returncode == -signal.SIGKILL and not (tmp_path / "m").exists()
    with pytest.raises(ModelFileError, match=r"left the previous model at .*\.m\.sqz-old-"):
        read_model_meta(tmp_path / "m")
    kept = atomic.interrupted_replacement(tmp_path / "m")
    assert _state(kept) == ("a", "aaa")  # the old model, whole
