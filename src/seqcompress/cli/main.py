"""The `seqcompress` command: one sub-command per module in this package.

Every expected failure (a SeqCompressError) ends as one line on stderr and exit status 1;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer
from typer import exceptions as typer_exceptions
from typer._click import exceptions as click_exceptions
from typer.core import TyperGroup

from seqcompress.errors import SeqCompressError


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
                message = f"error: {exc}"
            elif isinstance(exc, KeyboardInterrupt):
                message = "interrupted"
            else:
                message = f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
            typer.echo(" ".join(message.split()), err=True)
            ctx.exit(1)


app = typer.Typer(
    cls=_Group,
    help="Shorten sequences (text, DNA, time series, audio) into latent sequences with a "
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
    from seqcompress.cli import decode, demo, encode, evaluate, fit, info, probe

    for module in (fit, encode, decode, evaluate, info, probe, demo):
        module.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="seqcompress")
    except BrokenPipeError:
        # Output piped into e.g. `head` that stopped reading: no traceback, and none at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # 128 + SIGPIPE, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
