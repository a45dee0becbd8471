"""Defaults shared by the library and the command line, in a module that imports nothing heavy, so that
`seqcompress --help` can show them without importing torch."""

DEFAULT_BATCH = 8  # windows per model call (encode, decode, evaluate) and per training step
CHUNK_WINDOWS = 64  # windows per stored .sqz chunk, and per int8 scale
STORED_DTYPE = "float16"  # what `encode` stores, and so what `evaluate` measures by default
