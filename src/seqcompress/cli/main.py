"""The `seqcompress` command: one sub-command per module in this package.

Every expected failure (a SeqCompressError) ends as one line on stderr and exit status 1;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import signal
import sys
import time

import typer
from typer import exceptions as typer_exceptions
from typer._click import exceptions as click_exceptions
from typer.core import TyperGroup

from seqcompress.cli.text import printable
from seqcompress.defaults import LAUNCHED_ENV, PEER_LOST_EXIT, PEER_LOST_GRACE_S
from seqcompress.errors import PeerLost, SeqCompressError


class Terminated(BaseException):
    """SIGTERM or SIGHUP (a timeout, a cancelled job, a closed terminal): raised where the program is, so every
    temporary file and staged directory is removed on the way out, as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def launched() -> bool:
    """A worker of `fit --nproc`: its launcher reports why the job stopped, in one line for all workers."""
    return os.environ.get(LAUNCHED_ENV) == "1"


def _terminate(signum, frame) -> None:
    raise Terminated(signum)


class _PlainFormatter(logging.Formatter):
    """Notes quote file names: shown with control characters escaped, like every other name."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def _log_notes() -> None:
    """The library's notes ("removed a temporary file left by an interrupted run") as lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PlainFormatter("note: %(message)s"))
    logger = logging.getLogger("seqcompress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class _Group(TyperGroup):
    """Turns expected failures into one readable line, for the console script and CliRunner alike."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer_exceptions.Exit, typer_exceptions.Abort, click_exceptions.ClickException):
            raise  # --help, usage errors and aborts keep typer's own handling
        except BrokenPipeError:
            raise  # the reader went away (`| head`): main() ends quietly
        except Exception as exc:  # noqa: BLE001 - every failure reaches the user as one line
            if (ctx.obj or {}).get("debug"):
                raise
            if isinstance(exc, SeqCompressError):
                message = f"error: {_as_flag(ctx, str(exc))}"
            elif isinstance(exc, MemoryError):
                message = "error: out of memory (a smaller --batch-size needs less)"
            else:
                message = f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
            lost = isinstance(exc, PeerLost) and launched()
            if lost:  # the launcher names the worker that failed and stops this one (its SIGTERM ends the wait);
                _await_launcher(PEER_LOST_GRACE_S)  # not stopped within the grace, this one says why it stopped
            typer.echo(printable(" ".join(message.split())), err=True)
            ctx.exit(PEER_LOST_EXIT if lost else 1)


def _await_launcher(grace: float) -> None:
    """A launched worker whose peer failed waits up to `grace` seconds for the launcher to stop it.

    The peer that failed is still reporting (its one line, its cleanup); were this worker to exit first, the
    launcher would see this exit as the first failure and stop the peer before it said why, or between its line
    and its exit code. Waiting lets the peer's own exit come first; the launcher then stops this worker with
    SIGTERM, which raises Terminated here. A peer that does not exit (a rank that hangs, or one on another node,
    whose failure this node's launcher never sees) holds the job no longer than the grace."""
    end = time.monotonic() + grace
    while time.monotonic() < end:
        time.sleep(0.1)


def _as_flag(ctx, message: str) -> str:
    """The library names parameters ("ratio must be ..."); on the command line, name the flag ("--ratio must be
    ...") when the message starts with a parameter of the command that ran."""
    command = ctx.command.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
    first = re.match(r"[a-z_]+", message)
    if command is None or first is None:
        return message
    for param in command.params:
        flags = [o for o in getattr(param, "opts", []) if o.startswith("--")]
        if param.name == first.group(0) and flags and getattr(param, "param_type_name", "") == "option":
            return flags[0] + message[first.end():]
    return message


app = typer.Typer(
    cls=_Group,
    help="Shorten sequences (`seqcompress domains` lists the kinds of data) into latent sequences with a "
    "reducing-attention autoencoder, and rebuild them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _options(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
) -> None:
    ctx.obj = {"debug": debug}


def _register() -> None:
    from seqcompress.cli import decode, demo, domains, encode, evaluate, fit, info, plot, probe

    for module in (fit, encode, decode, evaluate, info, probe, plot, demo, domains):
        module.register(app)


_register()


def _steady_heap() -> None:
    """Large tensors are mapped and returned to the system when freed, instead of being kept in the heap.

    glibc raises its mmap threshold (up to 32 MB) each time a mapped block is freed, so blocks of a few MB
    (a slice of vocabulary logits, a chunk of latents) move into the heap, where sizes that vary from batch to
    batch fragment it: a text decode grew to 0.8 GB on a 2 MB file and past 1.2 GB on larger ones. A fixed
    threshold of 1 MB keeps the peak flat (0.32 GB for the same decode; docs/streaming.md)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; a fixed value also stops the dynamic adjustment
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def main() -> None:
    """Console-script entry point."""
    _steady_heap()
    _log_notes()
    # A launched worker also takes Ctrl-C as a stop: its launcher reports it, once.
    for signum in (signal.SIGTERM, signal.SIGHUP, *((signal.SIGINT,) if launched() else ())):
        signal.signal(signum, _terminate)
    try:
        app(prog_name="seqcompress")
    except Terminated as stop:
        if launched():  # a worker stopped by its launcher, which says why; no teardown of the backend's threads
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + stop.signum)
        name = signal.Signals(stop.signum).name
        sys.stderr.write(f"error: stopped by {name}; unfinished outputs were removed\n")
        sys.exit(128 + stop.signum)
    except BrokenPipeError:
        # Output piped into e.g. `head` that stopped reading: no traceback, and none at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # 128 + SIGPIPE, as a shell reports it
    finally:  # a signal while Python shuts down ends the process as signals do, without a trace
        for signum in (signal.SIGTERM, signal.SIGHUP, *((signal.SIGINT,) if launched() else ())):
            signal.signal(signum, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
