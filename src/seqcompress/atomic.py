"""Crash-consistent outputs: a reader never sees a half-written file or a half-replaced directory, a failure
or a signal leaves nothing behind, and no-overwrite holds even when two commands race for one name.

- `atomic_open(path)`: a temporary file beside `path`, renamed into place when complete. With
  `overwrite=False` the final step is a hard link (or `renameat2(RENAME_NOREPLACE)`), which fails when the
  name exists, instead of a check at the start that a concurrent writer could pass too.
- `atomic_directory(path)`: a whole directory (a model, a checkpoint) staged beside `path` and swapped in
  with one `renameat2(RENAME_EXCHANGE)`, so a kill at any point leaves the old or the new directory, never a
  mix. Where the kernel or file system cannot exchange, two renames are used and the old directory is kept
  as `.NAME.old-*` until the new one is in place (`interrupted_replacement` finds it).

Temporary names carry the writer's process id (`.NAME.PID.XXXX.tmp`); those of processes that no longer run
(a `kill -9`, a power cut) are removed by the next write to the same name and reported on the
"seqcompress" logger. SIGTERM and SIGHUP reach the cleanup as exceptions (see `seqcompress.cli.main`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from seqcompress.errors import InputError

log = logging.getLogger("seqcompress")

_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG)
_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


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


def _stale(parent: Path, prefix: str) -> list[Path]:
    """Temporary entries `PREFIX.PID.*` in `parent` left by processes that no longer run."""
    found = []
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            rest = entry.name[len(prefix):] if entry.name.startswith(prefix) else ""
            pid = rest.split(".", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                found.append(entry)
    return found


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Remove what interrupted writers of `path` left beside it (temporary files and staged directories);
    returns what was removed. Each removal is reported on the "seqcompress" logger."""
    path = Path(path)
    removed = []
    for prefix in (f".{path.name}.", f".{path.name}.new.", f".{path.name}.old."):
        for entry in _stale(path.parent, prefix):
            if prefix.endswith(".old.") and not path.exists():
                continue  # the only copy of a model whose replacement was interrupted: keep it
            with contextlib.suppress(OSError):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
                removed.append(entry)
                log.info("removed %s, left by an interrupted run", entry)
    return removed


def _temp_prefix(path: Path, kind: str = "") -> str:
    return f".{path.name}.{kind}{os.getpid()}."


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
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        try:
            with os.fdopen(fd, mode, encoding=encoding) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, _new_file_mode())  # mkstemp makes 0600; give the output the mode open() would
            _publish(Path(tmp), path, overwrite)
        except OSError as exc:
            # A full disk or a file-size limit while writing (no file name: the error is the handle's, not an
            # input's that the block was reading) is the output's failure: name the output, not the temporary.
            if exc.errno in _WRITE_ERRORS and exc.filename in (None, tmp):
                raise InputError(f"cannot write {path}: {os.strerror(exc.errno)}") from None
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


def _fsync_tree(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_file():
            with open(entry, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def interrupted_replacement(path: str | os.PathLike) -> Path | None:
    """The previous copy of directory `path` kept by a replacement that was interrupted between its two renames
    (only where the file system cannot exchange directories), when `path` itself is missing."""
    path = Path(path)
    if path.exists():
        return None
    olds = sorted(path.parent.glob(f".{path.name}.old.*"))
    return olds[-1] if olds else None


_TEMPORARY = re.compile(r"^\..+\.(?:(?:new|old)\.)?\d+\.[^.]+(?:\.tmp)?$")  # what this module names its temporaries


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


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, carry_over: bool = False, drop: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty staging directory beside `path`; when the block ends without an error it replaces `path`
    as a whole. With `carry_over`, entries of the old directory that the block did not write (except those in
    `drop`) are kept. On an error or a signal the staging directory is removed and `path` is untouched."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    remove_stale(path)
    try:
        stage = Path(tempfile.mkdtemp(prefix=_temp_prefix(path, "new."), dir=parent))
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        try:
            yield stage
            if carry_over and path.is_dir():
                _carry_over(path, stage, drop)
            os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes 0700; give it the mode mkdir would
            _fsync_tree(stage)
            _swap_in(stage, path)
        except OSError as exc:
            if exc.errno in _WRITE_ERRORS:
                raise InputError(f"cannot write {path}: {os.strerror(exc.errno)}") from None
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
    old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path, "old."), dir=path.parent))
    os.rmdir(old)
    os.rename(path, old)
    os.rename(stage, path)
    shutil.rmtree(old, ignore_errors=True)
