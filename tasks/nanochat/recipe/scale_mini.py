"""nanochat's mini scale: the GPT at depth 2 on the offline English corpus, 160 steps on two CPU cores.

The declared scale of the shared recipe (train.py binds it with use_scale): sizes, data source and device settings.
The knobs among them sit in the same regions as in train.py, so each specialist owns its knobs here and its code
there.
"""
# Fixed by the task (outside every specialist's surface).
TIME_BUDGET_S = 60.0  # wall-clock cap per seed (160 steps take ~40 s on 2 quiet cores); the harness kills at 90 s
TOKENIZER = "bytes"
DATA_SOURCE = "mix"  # dataloader.py: English documents mixed with procedural task blocks

# autoresearch: begin arch
DEPTH = 2  # range: 2..4
SEQUENCE_LEN = 256  # range: 64..512
# autoresearch: end arch

# autoresearch: begin data
DEVICE_BATCH_SIZE = 8  # range: 1..64 (rows per forward pass, at most)
TOTAL_BATCH_TOKENS = 2048  # range: 256..65536
LOADER_KWARGS = dict(
    procedural_fraction=0.3,  # range: 0..0.6
)
# autoresearch: end data

# autoresearch: begin sched
NUM_ITERATIONS = 160  # range: 10..1000
# autoresearch: end sched

# autoresearch: begin sys
COMPILE = False
LOG_EVERY = 20  # range: 1..500
# autoresearch: end sys
