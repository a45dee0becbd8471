"""Defaults shared by the library and the command line, in a module that imports nothing heavy, so that
`seqcompress --help` can show them without importing torch."""

PAPER_DECAY_EPOCHS = 5.0  # the paper's schedule: the LR falls linearly over the first 5 epochs
DEFAULT_BATCH = 8  # windows per model call (encode, decode, evaluate) and per training step
CHUNK_WINDOWS = 64  # windows per stored .sqz chunk, and per int8 scale
STORED_DTYPE = "float16"  # what `encode` stores, and so what `evaluate` measures by default
LAUNCHED_ENV = "SEQCOMPRESS_LAUNCHED"  # set to 1 in the workers `fit --nproc` starts: their launcher reports failures
PEER_LOST_EXIT = 3  # a launched worker that stopped because another one did (its launcher names that one)
PEER_LOST_GRACE_S = 20.0  # how long such a worker waits for its launcher to stop it before it exits by itself
