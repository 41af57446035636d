"""Parameter Golf's mini scale: the same code at 4 layers of width 64, byte-level on an English corpus, ~25 s on 2 CPU
cores.

The declared scale of the shared recipe (train.py binds it with use_scale): sizes, data format and clock. The knobs
among them sit in the same regions as in train.py, so each specialist owns its knobs here and its code there.
"""
# Stop well inside the harness budget (60 s), leaving time to quantize and write the artifact.
MAX_WALLCLOCK_SECONDS = 40.0
# Bytes of the documents in ctx.data_dir/train.jsonl: 4 specials + 256 bytes, plus the merges learned below.
TOKENIZER = "byte260"
LOG_EVERY, LOG_FIRST_STEPS = 50, 0

# autoresearch: begin arch
num_layers = 4  # range: 1..12
model_dim = 64  # range: 16..512
num_heads = 4  # range: 1..16
num_kv_heads = 2  # range: 1..16
# autoresearch: end arch

# autoresearch: begin opt
iterations = 250  # range: 20..2000
warmdown_iters = 62  # range: 0..2000
muon_momentum_warmup_steps = 60  # range: 0..500
# autoresearch: end opt

# autoresearch: begin curr
train_seq_len = 128  # range: 32..1024
train_batch_tokens = 2048  # range: 256..16384
micro_batch_tokens = 2048  # range: 256..16384
short_seq_len = 32  # range: 16..512
sampling = "random"  # options: random|sequential
# autoresearch: end curr

# autoresearch: begin eval
eval_seq_len = 128  # range: 32..2048
eval_stride = 128  # range: 16..2048
# autoresearch: end eval

# autoresearch: begin tok
bpe_merges = 0  # range: 0..512
bpe_sample_bytes = 300000  # range: 50000..2000000
# autoresearch: end tok

# autoresearch: begin quant
keep_float_max_numel = 1024  # range: 0..100000
# autoresearch: end quant
