"""nanochat's full scale: base_train at depth 12 on pretraining shards, one CUDA GPU, 90 minutes.

The declared scale of the shared recipe (train.py binds it with use_scale): sizes, data source and device settings.
The knobs among them sit in the same regions as in train.py, so each specialist owns its knobs here and its code
there.
"""
# Fixed by the task (outside every specialist's surface).
TIME_BUDGET_S = 5400.0  # training wall clock per seed (90 minutes); the harness kills the trial at 6000 s
TOKENIZER = "gpt2"  # see tokenizer.py and the task README: nanochat's own 65536-token BPE is not reproduced
DATA_SOURCE = "shards"  # dataloader.py: .bin / parquet / jsonl shards staged into data_dir/shards

# autoresearch: begin arch
DEPTH = 12  # range: 8..16
SEQUENCE_LEN = 2048  # range: 512..4096
# autoresearch: end arch

# autoresearch: begin data
DEVICE_BATCH_SIZE = 32  # range: 4..64 (rows per forward pass, at most)
TOTAL_BATCH_TOKENS = 524288  # range: 65536..2097152
LOADER_KWARGS = dict()
# autoresearch: end data

# autoresearch: begin sched
NUM_ITERATIONS = -1  # > 0 overrides the data:params horizon
# autoresearch: end sched

# autoresearch: begin sys
COMPILE = True
LOG_EVERY = 100  # range: 1..500
# autoresearch: end sys
