"""Crashes, signals, races and full disks: real `seqcompress` processes stopped at each named step of a write
(seqcompress.faults) leave the old state or the new one, never a mix, and nothing temporary behind."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqcompress.atomic import STALE_SECONDS, atomic_open
from seqcompress.errors import InputError

TINY = ["--domain", "dna", "-D", "k=1", "--seq-len", "16", "--d-model", "16", "--heads", "2", "--layers", "1", "--batch-size", "8"]
FASTA = ">r1 one\n" + "ACGTTGCAAGGCTTAC" * 40 + "\n>r2\n" + "GGCATTACGATCAGTT" * 30 + "\n"


def seqcompress(*args, kill_at: str | None = None, limits=None, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}  # no wrapped lines on stderr
    if kill_at:
        env["SEQCOMPRESS_KILL_AT"] = kill_at
    done = subprocess.run([sys.executable, "-m", "seqcompress", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=limits)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob(".*"))


def age(directory: Path, seconds: float = 2 * STALE_SECONDS) -> None:
    """Let time pass for what a killed run left: temporaries are removed once untouched for STALE_SECONDS."""
    for p in directory.rglob(".*"):
        os.utime(p, (time.time() - seconds,) * 2, follow_symlinks=False)


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    """A model (its fingerprint) and a .sqz it wrote: what a crashed `fit --force` over it must not lose."""
    root = tmp_path_factory.mktemp("crash")
    data = root / "data.fa"
    data.write_text(FASTA)
    seqcompress("fit", data, "-o", root / "model", *TINY, "--max-steps", "2", "--quiet", check=True)
    seqcompress("encode", data, "-m", root / "model", "-o", root / "old.sqz", check=True)
    fingerprint = json.loads((root / "model" / "config.json").read_text())["fingerprint"]
    return root, data, fingerprint


@pytest.mark.parametrize("step", ["checkpoint:tensors-written", "checkpoint:state-written", "checkpoint:saved",
                                  "model-save:weights-written", "model-save:config-written"])
def test_a_kill_at_any_step_of_fit_force_leaves_the_old_model_whole(old, tmp_path, step):
    root, data, fingerprint = old
    model = tmp_path / "model"
    import shutil

    shutil.copytree(root / "model", model)
    killed = seqcompress("fit", data, "-o", model, *TINY, "--epochs", "2", "--seed", "1", "--force", "--quiet",
                         kill_at=step)
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((model / "config.json").read_text())["fingerprint"] == fingerprint
    decoded = seqcompress("decode", root / "old.sqz", "-m", model, "-o", tmp_path / "back.fa")
    assert decoded.returncode == 0, decoded.stderr  # every .sqz of the old model still decodes
    # the next run clears what the killed one staged, and finishes
    age(tmp_path)
    again = seqcompress("fit", data, "-o", model, *TINY, "--epochs", "2", "--seed", "1", "--force", "--quiet")
    assert again.returncode == 0, again.stderr
    assert json.loads((model / "config.json").read_text())["fingerprint"] != fingerprint
    assert leftovers(tmp_path) == [] and sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("step", ["checkpoint:tensors-written", "checkpoint:state-written"])
def test_a_kill_while_checkpointing_resumes_from_the_previous_checkpoint_to_the_same_model(old, tmp_path, step):
    root, data, _ = old
    straight = seqcompress("fit", data, "-o", tmp_path / "straight", *TINY, "--epochs", "3", "--quiet", "--json",
                           check=True)
    first = seqcompress("fit", data, "-o", tmp_path / "m", *TINY, "--epochs", "3", "--quiet",
                        kill_at="checkpoint:saved")  # killed after epoch 1's checkpoint
    assert first.returncode == -signal.SIGKILL
    second = seqcompress("fit", "-o", tmp_path / "m", "--resume", "--quiet", kill_at=step)  # killed writing epoch 2's
    assert second.returncode == -signal.SIGKILL
    state = json.loads((tmp_path / "m" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 1  # the checkpoint is epoch 1's, whole: not epoch 2's weights with epoch 1's counters
    age(tmp_path)
    resumed = seqcompress("fit", "-o", tmp_path / "m", "--resume", "--quiet", "--json", check=True)
    assert json.loads(resumed.stdout)["steps"] == json.loads(straight.stdout)["steps"]
    a = (tmp_path / "straight" / "model.safetensors").read_bytes()
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == a
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("signame", ["TERM", "HUP"])
def test_sigterm_and_sighup_remove_what_was_being_written(old, tmp_path, signame):
    root, data, _ = old
    stopped = seqcompress("encode", data, "-m", root / "model", "-o", tmp_path / "x.sqz", "--chunk-windows", "1",
                          kill_at=f"encode:chunk-written:{signame}")
    assert stopped.returncode == 128 + getattr(signal, f"SIG{signame}")
    assert stopped.stderr.strip().splitlines() == [f"error: stopped by SIG{signame}; unfinished outputs were removed"]
    assert list(tmp_path.iterdir()) == []
    fit = seqcompress("fit", data, "-o", tmp_path / "m", *TINY, "--epochs", "2", "--quiet",
                      kill_at=f"checkpoint:tensors-written:{signame}")
    assert fit.returncode == 128 + getattr(signal, f"SIG{signame}") and "Traceback" not in fit.stderr
    assert leftovers(tmp_path) == []


def test_temporaries_of_a_killed_run_are_removed_by_the_next_and_reported(old, tmp_path):
    root, data, _ = old
    killed = seqcompress("encode", data, "-m", root / "model", "-o", tmp_path / "x.sqz", "--chunk-windows", "1",
                         kill_at="encode:chunk-written")
    assert killed.returncode == -signal.SIGKILL and len(leftovers(tmp_path)) == 1 and not (tmp_path / "x.sqz").exists()
    fresh = seqcompress("encode", data, "-m", root / "model", "-o", tmp_path / "y.sqz", check=True)
    assert len(leftovers(tmp_path)) == 1 and "interrupted" not in fresh.stderr  # another name: not touched
    (tmp_path / "x.sqz").unlink(missing_ok=True)
    again = seqcompress("encode", data, "-m", root / "model", "-o", tmp_path / "x.sqz", check=True)
    assert len(leftovers(tmp_path)) == 1, "removed while it might still be written (another host's writer)"
    age(tmp_path)
    again = seqcompress("encode", data, "-m", root / "model", "-o", tmp_path / "x.sqz", "--force", check=True)
    assert leftovers(tmp_path) == [] and "left by an interrupted run" in again.stderr


def test_no_overwrite_is_decided_when_the_output_is_put_in_place(tmp_path):
    target = tmp_path / "out.sqz"
    with pytest.raises(InputError, match="already exists"):
        with atomic_open(target, "wb", overwrite=False) as handle:
            handle.write(b"mine")
            target.write_bytes(b"another command's result")  # a second writer finished first
    assert target.read_bytes() == b"another command's result" and sorted(os.listdir(tmp_path)) == ["out.sqz"]


def test_two_encodes_racing_for_one_output_never_both_succeed(old, tmp_path):
    root, data, _ = old
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "seqcompress", "encode", str(data), "-m", str(root / "model"), "-o",
           str(tmp_path / "x.sqz")]
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = sorted(p.wait(timeout=300) for p in procs)
    errors = [p.stderr.read() for p in procs]
    assert codes == [0, 1] and sum("already exists" in e for e in errors) == 1
    assert seqcompress("decode", tmp_path / "x.sqz", "-m", root / "model", "-o", tmp_path / "y.fa").returncode == 0


def test_a_full_disk_during_checkpoints_still_saves_the_model(old, tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: the model (about a third of a checkpoint) fits, a checkpoint not."""
    root, data, _ = old
    model_bytes = (root / "model" / "model.safetensors").stat().st_size

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * model_bytes, 2 * model_bytes))

    done = seqcompress("fit", data, "-o", tmp_path / "m", *TINY, "--epochs", "2", "--quiet", limits=small_disk)
    assert done.returncode == 0, done.stderr
    assert "no checkpoint written" in done.stderr and "File too large" in done.stderr
    assert (tmp_path / "m" / "config.json").is_file() and leftovers(tmp_path) == []
    full = seqcompress("encode", data, "-m", tmp_path / "m", "-o", tmp_path / "x.sqz", limits=lambda: (
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN), resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))))
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 1 and lines == [f"error: cannot write {tmp_path / 'x.sqz'}: File too large"]
    assert leftovers(tmp_path) == [] and not (tmp_path / "x.sqz").exists()


def test_names_are_shown_as_plain_text(old, tmp_path):
    root, data, _ = old
    sqz = tmp_path / "in.sqz"
    seqcompress("encode", data, "-m", root / "model", "-o", sqz, check=True)
    (tmp_path / "a[").mkdir()
    name = tmp_path / "a[/]b[bold]\x1b[2Jc.fa"  # the path holds Rich's closing tag "[/]"
    done = seqcompress("decode", sqz, "-m", root / "model", "-o", name)
    assert done.returncode == 0, done.stderr
    assert "a[/]b[bold]\\x1b[2Jc.fa" in done.stderr and "\x1b[2J" not in done.stderr
    assert name.read_text().startswith(">r1 one\n")
