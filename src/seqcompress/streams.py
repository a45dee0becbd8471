"""Files, standard input and standard output, the same way for every command.

`-` names stdin or stdout. A tool reading a stream must not hold it in memory and may need to read it twice
(checksum, header, then data), so stdin is spooled to a temporary file first; an output goes to a temporary
file beside the target and is renamed into place (nothing half-written is ever seen), or, for `-`, to a
temporary file that is copied to stdout when complete (some writers, like audio, must seek).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from seqcompress.atomic import atomic_open

STDIO = "-"
_BLOCK = 1 << 20


def is_stdio(path: str | Path) -> bool:
    return str(path) == STDIO


@contextlib.contextmanager
def input_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A readable path for `path`; for `-`, stdin spooled to a temporary file (removed afterwards)."""
    if not is_stdio(path):
        yield Path(path)
        return
    with tempfile.NamedTemporaryFile(prefix="seqcompress-stdin-", suffix=suffix) as spool:
        shutil.copyfileobj(sys.stdin.buffer, spool, _BLOCK)
        spool.flush()
        yield Path(spool.name)


@contextlib.contextmanager
def output_file(path: str | Path, overwrite: bool = True) -> Iterator[BinaryIO]:
    """A seekable binary file for the output `path`, moved into place (or copied to stdout for `-`) when the
    block ends without an error; on an error nothing is left behind. Without `overwrite`, a file that appeared
    at `path` meanwhile (another command writing the same name) is kept and this write fails."""
    if not is_stdio(path):
        with atomic_open(path, "wb", overwrite=overwrite) as handle:
            yield handle
        return
    with tempfile.TemporaryFile(prefix="seqcompress-stdout-") as handle:
        yield handle
        handle.flush()
        handle.seek(0)
        shutil.copyfileobj(handle, sys.stdout.buffer, _BLOCK)
        sys.stdout.buffer.flush()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
