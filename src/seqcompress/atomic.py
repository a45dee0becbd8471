"""Crash-consistent outputs: a reader never sees a half-written file or a half-replaced directory, a failure
or a signal leaves nothing behind, and no-overwrite holds even when two commands race for one name.

- `atomic_open(path)`: a temporary file beside `path`, renamed into place when complete. With
  `overwrite=False` the final step is a hard link (or `renameat2(RENAME_NOREPLACE)`), which fails when the
  name exists, instead of a check at the start that a concurrent writer could pass too.
- `atomic_directory(path)`: a whole directory (a model, a checkpoint) staged beside `path` and swapped in
  with one `renameat2(RENAME_EXCHANGE)`, so a kill at any point leaves the old or the new directory, never a
  mix. Where the directory itself cannot be renamed (`.`, a mount point, a parent that is not writable, a
  file system without the exchange), the files are committed inside it through a journal instead: staged
  in `.sqz-next-*`, then a `.sqz-commit` record naming them, then one rename per file. A reader that finds the
  record finishes the commit first (`finish_commit`), so it too sees the old files or the new ones.

Temporary names carry the writer's process id (`.NAME.sqz-PID-XXXX.tmp`, `.NAME.sqz-new-PID-XXXX`); those of
processes that no longer run and untouched for a minute (a `kill -9`, a power cut) are removed by the next
write to the same name and reported on the "seqcompress" logger. SIGTERM and SIGHUP reach the cleanup as
exceptions (see `seqcompress.cli.main`); they are held back while a directory is being swapped.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from seqcompress import faults
from seqcompress.errors import InputError, ModelFileError, WriteError

log = logging.getLogger("seqcompress")

_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG)
_CANNOT_RENAME = (errno.EBUSY, errno.EXDEV, errno.EINVAL, errno.EPERM, errno.EACCES, errno.EROFS, errno.ENOTEMPTY)
_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
STALE_SECONDS = 60  # a dead writer's temporary untouched this long is removed (another host's may look dead)
_TAG = "sqz-"  # every temporary name holds it: `.NAME.sqz-[new-|old-]PID-RANDOM[.tmp]`
_TEMPORARY = re.compile(r"^\..*\.sqz-(?:new-|old-)?(\d+)-[A-Za-z0-9_]+(?:\.tmp)?$|^\.sqz-(?:next-(\d+)-\w+|commit)$")
COMMIT_RECORD, _NEXT = ".sqz-commit", ".sqz-next-"


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; False where the C library, kernel or file system lacks it (the caller falls back)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        return False
    if call(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(dst))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _abandoned(entry: Path, pid: str) -> bool:
    """A temporary whose writer no longer runs here and that nobody touched for STALE_SECONDS."""
    try:
        idle = time.time() - entry.lstat().st_mtime
    except OSError:
        return False
    return int(pid) != os.getpid() and not _alive(int(pid)) and idle > STALE_SECONDS


def _remove(entry: Path) -> bool:
    try:
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    except OSError:
        return False
    log.info("removed %s, left by an interrupted run", entry)
    return True


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Remove what interrupted writers of `path` left beside it (temporary files and staged directories; the
    previous copy of a directory whose replacement stopped half-way is kept while `path` is missing)."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{_TAG}(new-|old-)?(\d+)-[A-Za-z0-9_]+(?:\.tmp)?$")
    removed = []
    with contextlib.suppress(OSError):
        for entry in (path.parent if str(path.parent) else Path(".")).iterdir():
            match = pattern.match(entry.name)
            if not match or not _abandoned(entry, match.group(2)):
                continue
            if match.group(1) == "old-" and not path.exists():
                continue  # the only copy of a model whose replacement was interrupted: keep it
            if _remove(entry):
                removed.append(entry)
    return removed


def _temp_prefix(path: Path, kind: str = "") -> str:
    return f".{path.name}.{_TAG}{kind}{os.getpid()}-"


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a power cut after the command reported success keeps it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if `path` exists, however it came to exist
    except FileExistsError:
        raise InputError(f"{path} already exists (written by another command meanwhile?); use --force to "
                         "overwrite it") from None
    except OSError:  # no hard links on this file system
        try:
            if not _renameat2(tmp, path, _RENAME_NOREPLACE):
                if path.exists():
                    raise FileExistsError(path)
                os.rename(tmp, path)
        except FileExistsError:
            raise InputError(f"{path} already exists; use --force to overwrite it") from None
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None,
                overwrite: bool = True) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success move it to `path` (over an existing file only when
    `overwrite`), on any error or signal delete it."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    remove_stale(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=parent)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}", exc.errno) from None
    try:
        try:
            with os.fdopen(fd, mode, encoding=encoding) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, _new_file_mode())  # mkstemp makes 0600; give the output the mode open() would
            _publish(Path(tmp), path, overwrite)
            _fsync_dir(parent)
        except OSError as exc:
            # A full disk or a file-size limit while writing (no file name: the error is the handle's, not an
            # input's that the block was reading) is the output's failure: name the output, not the temporary.
            if exc.errno in _WRITE_ERRORS and exc.filename in (None, tmp):
                raise WriteError(f"cannot write {path}: {os.strerror(exc.errno)}", exc.errno) from None
            raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _new_file_mode() -> int:
    """0666 minus the process umask: what a plain open(path, "w") creates."""
    return 0o666 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> None:
    with atomic_open(path, "wb", overwrite=overwrite) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> None:
    with atomic_open(path, "w", encoding="utf-8", overwrite=overwrite) as handle:
        handle.write(text)


# ---- whole directories ---------------------------------------------------------------------------------
def _fsync_files(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_file() and not entry.is_symlink():
            with open(entry, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(directory)


def _carry_over(old: Path, stage: Path, drop: tuple[str, ...]) -> None:
    """Hard-link the entries of `old` that `stage` does not replace (a user's notes, logs) into `stage`; the old
    directory keeps them until the swap, so a kill loses nothing."""
    for entry in old.iterdir():
        if entry.name in drop or (stage / entry.name).exists() or _TEMPORARY.match(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, stage / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, stage / entry.name)


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _take_mode(old: Path, stage: Path) -> None:
    """The replaced directory's mode and owner (the new one would otherwise get mkdtemp's 0700 and our uid)."""
    try:
        st = old.stat()
    except OSError:
        os.chmod(stage, 0o777 & ~_umask())
        return
    os.chmod(stage, st.st_mode & 0o7777)
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            os.chown(stage, st.st_uid, st.st_gid)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP wait until the block ends: a swap is never left between its renames."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    try:
        before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, carry_over: bool = False, drop: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty staging directory; when the block ends without an error its files replace `path` as a
    whole. With `carry_over`, entries of the old directory that the block did not write (except those in
    `drop`) are kept. On an error or a signal the staging directory is removed and `path` is untouched."""
    path = Path(path).resolve()  # `.` has no name to stage beside; a symlink keeps pointing at the new directory
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    finish_commit(path)
    try:
        stage = Path(tempfile.mkdtemp(prefix=_temp_prefix(path, "new-"), dir=parent))
    except OSError:  # the parent is not writable: stage inside the directory itself
        path.mkdir(exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f"{_NEXT}{os.getpid()}-", dir=path))
    try:
        try:
            yield stage
            _fsync_files(stage)
            if stage.parent == path:
                _commit_in_place(stage, path, drop)
                return
            if carry_over and path.is_dir():
                _carry_over(path, stage, drop)
            _take_mode(path, stage)
            with _signals_held():
                try:
                    _swap_in(stage, path)
                except OSError as exc:
                    if exc.errno not in _CANNOT_RENAME or not path.is_dir():
                        raise
                    inside = Path(tempfile.mkdtemp(prefix=f"{_NEXT}{os.getpid()}-", dir=path))
                    for entry in stage.iterdir():  # `.`, a mount point, a bind mount: commit the files inside
                        shutil.move(str(entry), inside / entry.name)
                    shutil.rmtree(stage, ignore_errors=True)
                    stage = inside
                    _fsync_files(stage)
                    _commit_in_place(stage, path, drop)
            _fsync_dir(parent)
        except OSError as exc:
            if exc.errno in _WRITE_ERRORS:
                raise WriteError(f"cannot write {path}: {os.strerror(exc.errno)}", exc.errno) from None
            raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _swap_in(stage: Path, path: Path) -> None:
    """Put `stage` at `path`: a plain rename when `path` is absent, else one exchange (the old directory
    lands at `stage` and is removed), else two renames with the old one kept until the second is done."""
    if not path.exists():
        os.rename(stage, path)
        return
    if _renameat2(stage, path, _RENAME_EXCHANGE):
        shutil.rmtree(stage, ignore_errors=True)  # now the old directory
        return
    old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path, "old-"), dir=path.parent))
    os.rmdir(old)
    os.rename(path, old)
    faults.point("swap:old-moved-aside")
    os.rename(stage, path)
    shutil.rmtree(old, ignore_errors=True)


def _commit_in_place(stage: Path, path: Path, drop: tuple[str, ...]) -> None:
    """Move the files staged in `path/.sqz-next-*` over their names in `path` through a commit record, so that
    a kill at any point leaves a state `finish_commit` completes."""
    names = sorted(p.name for p in stage.iterdir())
    record = {"from": stage.name, "files": names, "drop": [d for d in drop if d not in names]}
    with _signals_held():
        tmp = path / f"{COMMIT_RECORD}.{os.getpid()}"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path / COMMIT_RECORD)
        _fsync_dir(path)
        faults.point("commit:recorded")
        finish_commit(path)


def finish_commit(path: str | os.PathLike) -> None:
    """Complete an in-place commit that a kill interrupted (idempotent): move every staged file the record
    names into place, remove what it drops, then the record. Nothing to do without a record."""
    path = Path(path)
    record_path = path / COMMIT_RECORD
    if not record_path.is_file():
        with contextlib.suppress(OSError):  # files a killed writer staged before it wrote the record
            for entry in path.iterdir() if path.is_dir() else ():
                match = re.match(rf"^{re.escape(_NEXT)}(\d+)-", entry.name)
                if match and _abandoned(entry, match.group(1)):
                    _remove(entry)
        return
    try:
        record = json.loads(record_path.read_text())
        stage = path / record["from"]
        if not stage.name.startswith(_NEXT) or "/" in record["from"]:
            raise ValueError(record["from"])
        for name in record["files"]:
            if (stage / name).exists():
                target = path / name
                if target.is_dir() and not target.is_symlink() and (stage / name).is_dir():
                    shutil.rmtree(target)
                os.replace(stage / name, target)
        for name in record.get("drop", []):
            if "/" not in name and (path / name).exists():
                shutil.rmtree(path / name, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
        _fsync_dir(path)
        os.unlink(record_path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: an interrupted save could not be completed ({exc}); "
                             f"a user who can write {path} can finish it by loading the model") from None


def interrupted_replacement(path: str | os.PathLike) -> Path | None:
    """The previous copy of directory `path` kept by a replacement that was interrupted between its two renames
    (only where the file system cannot exchange directories), when `path` itself is missing."""
    path = Path(path)
    if path.exists():
        return None
    olds = sorted(path.parent.glob(f".{path.name}.{_TAG}old-*"))
    return olds[-1] if olds else None
