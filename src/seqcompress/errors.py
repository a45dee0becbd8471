"""One exception family, so the CLI can turn every expected failure into one clear line."""


class SeqCompressError(Exception):
    """Base of every expected failure; the message is meant for the user."""


class InputError(SeqCompressError):
    """Bad user input: a missing, empty or unreadable data file, a bad option value."""


class WriteError(InputError):
    """An output that could not be written (a full disk, a read-only folder); `errno` says which."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class ModelFileError(SeqCompressError):
    """A model directory that is missing, incomplete or not a seqcompress model."""


class FormatError(SeqCompressError):
    """A latent file that is truncated, corrupted or not a latent file."""


class ModelMismatchError(SeqCompressError):
    """A latent file written by a different model than the one given."""


class PeerLost(SeqCompressError):
    """In data-parallel training, another process of the job stopped (a collective operation failed, or it
    refused to start and says why itself): this one stops too."""
