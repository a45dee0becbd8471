"""`python -m seqcompress ...`: the same command as the `seqcompress` script."""

from seqcompress.cli.main import main

main()
