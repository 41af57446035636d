"""NanoChat task evaluator: stages data, then scores a trained checkpoint on CORE (full) or mini-CORE (mini).

Runs in the harness' stage/evaluate processes and never imports or runs recipe code. The recipe's model
(``gpt.serve_model`` on ``<outputs>/seed-<n>/model.pt``) and its tokenizer (``tokenizer.serve_<name>``, the name
the checkpoint gives) each run in a sandboxed model server of their own, so the code that sees the evaluation
text never meets the model that predicts it, and neither sees the held-out files. The model server returns
next-token log-probabilities at the positions asked for; every loss and accuracy is computed here from them,
after checking that each returned row is a normalized distribution. Causality is probed at the scoring shapes:
randomly chosen scoring batches get a perturbed twin (see ``ServedLM``).

Options (the ``evaluator`` fixture's ``options``; environment variables fill the paths when the option is unset):
- ``eval_bundle`` / ``NANOCHAT_EVAL_BUNDLE``   full: the unzipped DCLM ``eval_bundle/`` folder.
- ``data_dir`` / ``NANOCHAT_DATA_DIR``         full: pretraining shards (see README for formats).
- ``core_max_per_task``                        full: items per CORE task (-1 = all, nanochat's default).
- ``bpb_tokens``                               full: validation tokens for bpb.
- ``tiktoken_encodings``                       full: tiktoken vocabularies stage caches for the recipe.
- ``corpus_jsonl``                             mini: another corpus file in tasks/corpus' format (tests use it).
- ``val_fraction``, ``eval_seed``, ``train_seed``, ``items_per_task``, ``procedural_blocks``, ``bpb_bytes``  mini.
- ``batch_tokens``, ``probe_rate``, ``min_probes``  both: scoring batch size, share of probed batches, probes at least.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nanochat_core  # noqa: E402
import nanochat_minicore  # noqa: E402
from pytest_autoresearch.runtime import OutputError  # noqa: E402

MINI_DEFAULTS: dict[str, Any] = dict(val_fraction=0.1, eval_seed=20240611, train_seed=7, items_per_task=600,
                                     procedural_blocks=4000, bpb_bytes=60_000, batch_tokens=8192, probe_rate=0.1,
                                     min_probes=3)
FULL_DEFAULTS: dict[str, Any] = dict(core_max_per_task=-1, bpb_tokens=2 ** 18, batch_tokens=65536,
                                     tiktoken_encodings=("gpt2",), probe_rate=0.02, min_probes=3)
SHARD_SUFFIXES = (".bin", ".parquet", ".jsonl", ".jsonl.gz")
MAX_ANSWER_FLOATS = 1 << 26   # log-probabilities per model-server answer at most (256 MB of float32)
NORM_TOL = 1e-3               # |logsumexp| of a returned row of log-probabilities
LEAK_TOL = 1e-3               # largest change a probe may see where the perturbation cannot reach a causal model
TOKENIZER_NAME = re.compile(r"^[a-z0-9_]{1,32}$")
# Tokenizers whose server needs staged files: a model server shows only the checkout and one output file.
# Tokenizers whose server must see staged files (the tiktoken vocabulary in the train folder's tiktoken/).
NEEDS_STAGED_FILES = {"gpt2"}


class RecipeFault(RuntimeError):
    """The recipe's model or tokenizer answered something unusable: the harness labels the trial ``crash``."""

    recipe_fault = True


def _opt(ctx: Any, key: str) -> Any:
    defaults = MINI_DEFAULTS if ctx.variant == "mini" else FULL_DEFAULTS
    return ctx.options.get(key, defaults.get(key))


def _path_opt(ctx: Any, key: str, env: str, what: str) -> Path:
    raw = ctx.options.get(key) or os.environ.get(env)
    if not raw:
        raise FileNotFoundError(f"the full nanochat variant needs {what}: set the evaluator option '{key}' or the "
                                f"environment variable {env} (see tasks/nanochat/README.md)")
    path = Path(raw).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path} (from option '{key}' / {env})")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Corpus (mini)

def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _load_corpus(ctx: Any) -> tuple[list[dict], list[dict]]:
    """(train, held-out) documents of the offline English corpus (tasks/corpus), split by document-id hash."""
    sys.path.insert(0, str(HERE.parent / "corpus"))
    try:
        import corpus  # tasks/corpus/corpus.py
    except ImportError as e:
        raise ImportError(f"tasks/corpus/corpus.py is missing or broken ({e}); the mini variant's English corpus "
                          f"lives there") from e
    finally:
        sys.path.pop(0)
    docs = corpus.load_documents(ctx.options.get("corpus_jsonl"))
    train, val = corpus.split_documents(docs, _opt(ctx, "val_fraction"))
    return [_doc(d) for d in train], [_doc(d) for d in val]


def _doc(d: Any) -> dict[str, str]:
    if isinstance(d, dict):
        return {"id": str(d["id"]), "text": d["text"]}
    return {"id": str(d.id), "text": d.text}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# stage

def stage(ctx: Any) -> None:
    """Training data to ``ctx.train_dir`` (the recipe's ``data_dir``); items, held-out text and validation shards
    to ``ctx.private_dir``. Nothing goes to ``ctx.test_dir``: the recipe has no predict phase."""
    (stage_mini if ctx.variant == "mini" else stage_full)(ctx)


def stage_mini(ctx: Any) -> None:
    train, val = _load_corpus(ctx)
    if not train or not val:
        raise ValueError(f"corpus split gave {len(train)} train / {len(val)} held-out documents; need both")
    items = nanochat_minicore.build_items([d["text"] for d in val], _opt(ctx, "eval_seed"),
                                          _opt(ctx, "items_per_task"))
    # Held-out text can repeat training text (shared boilerplate): drop items whose text occurs in training.
    train_blob = " ".join(" ".join(d["text"].split()) for d in train)
    for task in nanochat_minicore.TASKS:
        if task not in nanochat_minicore.PROCEDURAL:
            items[task] = [it for it in items[task] if _item_text(it) not in train_blob]
    blocks = nanochat_minicore.procedural_training_texts(_opt(ctx, "procedural_blocks"), _opt(ctx, "train_seed"),
                                                         nanochat_minicore.eval_keys(items))
    train_dir, priv = Path(ctx.train_dir), Path(ctx.private_dir)
    _write_jsonl(train_dir / "train_docs.jsonl", train)
    _write_jsonl(train_dir / "procedural_train.jsonl", blocks)
    nanochat_minicore.write_bundle(priv / "minicore", items)
    _write_jsonl(priv / "heldout.jsonl", val)
    counts = {t: len(v) for t, v in items.items()}
    (priv / "stage.json").write_text(json.dumps({"train_docs": len(train), "heldout_docs": len(val),
                                                 "items": counts, "procedural_blocks": len(blocks)}))
    print(f"staged mini: {len(train)} train docs, {len(val)} held-out docs, items {counts}", flush=True)


def _item_text(item: dict) -> str:
    if "query" in item:
        return item["query"]
    if "context_options" in item:
        return item["context_options"][item["gold"]] + " " + item["continuation"]
    return item["context"] + " " + item["continuation"]


def stage_full(ctx: Any) -> None:
    data_dir = _path_opt(ctx, "data_dir", "NANOCHAT_DATA_DIR", "the pretraining shards folder")
    shards = sorted(p for p in data_dir.iterdir() if p.name.endswith(SHARD_SUFFIXES) and not p.name.startswith("."))
    if not shards:
        raise FileNotFoundError(f"{data_dir} holds no shards ({', '.join(SHARD_SUFFIXES)}); see README")
    named_val = [p for p in shards if re.search(r"(^|[_.-])val([_.-]|$)", p.name)]
    val = named_val or shards[-1:]  # nanochat's convention: the last shard is validation
    train = [p for p in shards if p not in val]
    if not train:
        raise ValueError(f"{data_dir}: need at least two shards (train + validation); found {[p.name for p in shards]}")
    bundle = _path_opt(ctx, "eval_bundle", "NANOCHAT_EVAL_BUNDLE", "the DCLM eval bundle")
    nanochat_core.load_tasks(bundle)  # fail now, with the reason, rather than after a 90-minute run
    shards_dir = Path(ctx.train_dir) / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    for p in train:
        _place(p, shards_dir / p.name)
    val_dir = Path(ctx.private_dir) / "val"
    val_dir.mkdir(parents=True, exist_ok=True)
    for p in val:  # only the evaluator (a plain process) reads these, so a link to the source will do
        link = val_dir / p.name
        if not link.exists():
            link.symlink_to(p.resolve())
    for name in _opt(ctx, "tiktoken_encodings") or ():
        _stage_tiktoken(str(name), Path(ctx.train_dir) / "tiktoken")
    print(f"staged full: {len(train)} train shards, validation {[p.name for p in val]}, bundle {bundle}", flush=True)


def _place(src: Path, dest: Path) -> None:
    """A training shard the train sandbox can read: a hard link (same file system) or a copy. A symbolic link
    would point at a host path the sandbox does not show."""
    if dest.exists():
        return
    try:
        os.link(src.resolve(), dest)
    except OSError:
        shutil.copyfile(src, dest)


def _stage_tiktoken(name: str, dest: Path) -> None:
    """Cache a tiktoken vocabulary in ``dest`` (its downloaded files, named as tiktoken's cache names them), for
    the recipe's tokenizer: recipe processes have no network."""
    try:
        import tiktoken
    except ImportError as e:
        raise ImportError(f"staging the {name!r} tokenizer needs tiktoken (pip install tiktoken); a recipe trained "
                          f"with TOKENIZER = 'bytes' can set the evaluator option tiktoken_encodings=[]") from e
    dest.mkdir(parents=True, exist_ok=True)
    before = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(dest)
    try:
        tiktoken.get_encoding(name)
    finally:
        if before is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = before


# ----------------------------------------------------------------------------------------------------------------
# The recipe's model and tokenizer, each behind a model server

class ServedLM:
    """The recipe's model behind its model server, as ``nanochat_core``'s scorer: (ids, rows, cols) -> log-probs.

    Every answer is checked: shape (N, vocab) and rows that are normalized distributions (``norm_error`` keeps the
    worst |logsumexp|), so a model can only be scored on what it predicts, never on a number it reports.

    Causality is probed at the scoring shapes, where a model cannot tell a probe from a scoring batch: a batch is
    probed with probability ``probe_rate`` (drawn with ``secrets``: the recipe cannot predict which), and
    ``finish`` probes batches kept at random until at least ``min_probes`` ran. A probe picks one asked position
    (row r, position p), replaces row r's tokens after p with other tokens of the batch, and asks for that twin as
    a request of its own, before or after the real batch at random. A causal model that keeps rows apart answers
    the same at every position of the other rows and at row r's positions <= p; ``leak`` is the largest change
    seen there (peeking at the next token, at any later token, or across rows all show up).
    """

    def __init__(self, client: Any, probe_rate: float, min_probes: int) -> None:
        self.client = client
        self.vocab_size = _int_attr(client.attrs, "vocab_size")
        self.max_seq_len = _int_attr(client.attrs, "max_seq_len")
        self.probe_rate, self.min_probes = float(probe_rate), int(min_probes)
        self.rng = secrets.SystemRandom()
        self.np_rng = np.random.default_rng(self.rng.getrandbits(128))
        self.probes, self.leak, self.norm_error = 0, 0.0, 0.0
        self._kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._seen = 0

    def __call__(self, ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        x, r, c = (np.ascontiguousarray(t.cpu().numpy(), dtype=np.int64) for t in (ids, rows, cols))
        out = self._probe(x, r, c) if self.rng.random() < self.probe_rate else None
        if out is None:
            out = self._ask(x, r, c)
        self._keep(x, r, c)
        return torch.from_numpy(out)

    @property
    def causal(self) -> bool:
        return self.probes > 0 and self.leak <= LEAK_TOL

    @property
    def normalized(self) -> bool:
        return self.norm_error <= NORM_TOL

    def finish(self) -> None:
        """Probe kept batches until ``min_probes`` probes ran (a short evaluation draws few by chance; with fewer
        batches than that, one batch is probed again at another position)."""
        while self.probes < self.min_probes and self._kept:
            j = self.rng.randrange(len(self._kept))
            if self._probe(*self._kept[j]) is None:
                self._kept.pop(j)

    def _keep(self, x: np.ndarray, r: np.ndarray, c: np.ndarray) -> None:
        # Reservoir sampling: every batch is equally likely to be among the kept ones.
        self._seen += 1
        if len(self._kept) < self.min_probes:
            self._kept.append((x, r, c))
        elif (j := self.rng.randrange(self._seen)) < self.min_probes:
            self._kept[j] = (x, r, c)

    def _ask(self, x: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        out = self.client.call("log_probs", x, r, c)
        want = (len(r), self.vocab_size)
        if not isinstance(out, np.ndarray) or out.dtype.kind != "f" or out.shape != want:
            got = f"a {out.dtype} array of shape {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise RecipeFault(f"log_probs answered {got}; expected float log-probabilities of shape {want}")
        out = np.array(out, dtype=np.float32)  # a writable copy: the answer's buffer is read-only
        if out.size:
            err = float(torch.logsumexp(torch.from_numpy(out), -1).abs().max())
            self.norm_error = max(self.norm_error, err if math.isfinite(err) else math.inf)
        return out

    def _probe(self, x: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray | None:
        """The real answer for the batch, after comparing it with its perturbed twin's; None if the batch has no
        asked position with tokens after it."""
        after = np.flatnonzero(c < x.shape[1] - 1)
        if after.size == 0:
            return None
        i = int(after[self.rng.randrange(after.size)])
        row, p = int(r[i]), int(c[i])
        twin = x.copy()
        twin[row, p + 1:] = self._other_tokens(x, x[row, p + 1:])
        if self.rng.random() < 0.5:
            out, alt = self._ask(x, r, c), self._ask(twin, r, c)
        else:
            alt = self._ask(twin, r, c)
            out = self._ask(x, r, c)
        unreachable = (r != row) | (c <= p)
        self.leak = max(self.leak, _max_change(out[unreachable], alt[unreachable]))
        self.probes += 1
        return out

    def _other_tokens(self, x: np.ndarray, orig: np.ndarray) -> np.ndarray:
        """Tokens of the batch (plausible input, not noise a model could spot), each different from ``orig``."""
        pool = np.unique(x)
        if pool.size < 2:
            return (orig + self.np_rng.integers(1, self.vocab_size, size=orig.size)) % self.vocab_size
        new = pool[self.np_rng.integers(pool.size, size=orig.size)]
        while (clash := new == orig).any():
            new[clash] = pool[self.np_rng.integers(pool.size, size=int(clash.sum()))]
        return new


def _max_change(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b|, where equal non-finite values count as no change and any other NaN as infinite."""
    if a.size == 0:
        return 0.0
    d = np.abs(a.astype(np.float64) - b)
    d[(a == b) | (np.isnan(a) & np.isnan(b))] = 0.0
    d[np.isnan(d)] = np.inf
    return float(d.max())


def _int_attr(attrs: dict[str, Any], name: str) -> int:
    value = attrs.get(name)
    if type(value) is not int or value < 2:
        raise RecipeFault(f"the model server reports {name} = {value!r}; expected an int >= 2")
    return value


class RemoteTokenizer:
    """The recipe's tokenizer behind a model server of its own. Ids it returns must fit the model's vocabulary
    (an id the model cannot embed is the recipe's fault, reported as such)."""

    def __init__(self, client: Any, vocab_size: int) -> None:
        self.client, self.vocab_size = client, vocab_size
        self.name = str(client.attrs.get("name"))
        bos = client.attrs.get("bos_id")
        if type(bos) is not int or not 0 <= bos < vocab_size:
            raise RecipeFault(f"tokenizer bos_id {bos!r} is not an id below the model's vocabulary {vocab_size}")
        self.bos_id = bos
        self._bytes: dict[int, bytes] = {}

    def encode(self, text: str) -> list[int]:
        ids = self.client.call("encode", text)
        if not isinstance(ids, list) or not all(type(i) is int and 0 <= i < self.vocab_size for i in ids):
            raise RecipeFault(f"tokenizer encode() returned something other than ids below {self.vocab_size}")
        return ids

    def decode(self, ids: list[int]) -> str:
        text = self.client.call("decode", [int(i) for i in ids])
        if not isinstance(text, str):
            raise RecipeFault(f"tokenizer decode() returned {type(text).__name__}, not str")
        return text

    def token_bytes(self, i: int) -> bytes:
        if i not in self._bytes:
            raw = self.client.call("token_bytes", int(i))
            if not isinstance(raw, bytes):
                raise RecipeFault(f"tokenizer token_bytes({i}) returned {type(raw).__name__}, not bytes")
            self._bytes[i] = raw
        return self._bytes[i]


def _tokenizer_factory(attrs: dict[str, Any]) -> str:
    name = attrs.get("tokenizer")
    if not isinstance(name, str) or not TOKENIZER_NAME.match(name):
        raise RecipeFault(f"the checkpoint names tokenizer {name!r}; expected a name like 'bytes' or 'gpt2'")
    return f"serve_{name}"


# ----------------------------------------------------------------------------------------------------------------
# Checks and bits per byte

def roundtrip_ok(tok: Any, texts: list[str]) -> bool:
    return all(tok.decode(tok.encode(t)) == t for t in texts)


@torch.no_grad()
def bits_per_byte(model: nanochat_core.Scorer, docs: Iterator[tuple[list[int], int]], bos_id: int, max_seq_len: int,
                  vocab_size: int, batch_rows: int = 16) -> float:
    """Summed next-token loss (nats) over the documents' tokens, in bits per UTF-8 byte of the text.

    ``docs`` yields (token ids without BOS, byte count); each document starts from BOS and is cut into windows
    of the model's context (non-overlapping, as nanochat's evaluate_bpb). The model returns log-probabilities at
    the positions with a target; the loss is gathered here.
    """
    t = int(max_seq_len)
    windows: list[list[int]] = []
    nbytes = 0
    for ids, n in docs:
        seq = [bos_id] + list(ids)
        nbytes += n
        for s in range(0, len(seq) - 1, t):
            windows.append(seq[s:s + t + 1])
    rows = max(1, min(batch_rows, MAX_ANSWER_FLOATS // (t * vocab_size)))
    total = 0.0
    for i in range(0, len(windows), rows):
        chunk = windows[i:i + rows]
        width = max(len(w) for w in chunk) - 1
        x = torch.full((len(chunk), width), bos_id, dtype=torch.long)
        y = torch.full((len(chunk), width), -1, dtype=torch.long)
        for r, w in enumerate(chunk):
            x[r, :len(w) - 1] = torch.tensor(w[:-1])
            y[r, :len(w) - 1] = torch.tensor(w[1:])
        y[y == bos_id] = -1
        pr, pc = (y >= 0).nonzero(as_tuple=True)
        if pr.numel() == 0:
            continue
        logp = model(x, pr, pc)
        total -= float(logp.double().gather(1, y[pr, pc][:, None]).sum())
    return total / math.log(2) / max(nbytes, 1)


def _text_docs(tok: Any, texts: list[str], max_bytes: int) -> Iterator[tuple[list[int], int]]:
    used = 0
    for text in texts:
        if used >= max_bytes:
            return
        raw = text.encode("utf-8")[:max_bytes - used].decode("utf-8", errors="ignore")
        n = len(raw.encode("utf-8"))
        used += n
        yield tok.encode(raw), n


BIN_MAGIC, BIN_HEADER_INTS = 20240520, 256


def read_bin_tokens(path: Path) -> "Any":
    """Token ids of a llm.c / modded-nanogpt ``.bin`` shard: 256 int32 header (magic 20240520, version 1, count),
    then ``count`` uint16 ids."""
    header = np.fromfile(path, dtype=np.int32, count=BIN_HEADER_INTS)
    if header.size < 3 or header[0] != BIN_MAGIC:
        raise ValueError(f"{path}: not a .bin token shard (magic {header[:1]} != {BIN_MAGIC})")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=BIN_HEADER_INTS * 4, shape=(int(header[2]),))


def iter_shard_documents(path: Path, tok: Any) -> Iterator[tuple[list[int], int]]:
    """(token ids without BOS, UTF-8 byte count) per document of one validation shard."""
    name = path.name
    if name.endswith(".bin"):
        if tok.name != "gpt2":
            raise RecipeFault(f"{name} holds GPT-2 token ids, but the checkpoint's tokenizer is {tok.name!r}")
        tokens = np.asarray(read_bin_tokens(path))
        for doc in np.split(tokens, np.flatnonzero(tokens == tok.bos_id)):
            ids = doc[doc != tok.bos_id].tolist()
            if ids:
                yield ids, sum(len(tok.token_bytes(i)) for i in ids)
        return
    for text in iter_shard_texts(path):
        yield tok.encode(text), len(text.encode("utf-8"))


def iter_shard_texts(path: Path) -> Iterator[str]:
    name = path.name
    if name.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(f"{path}: reading parquet shards needs pyarrow (pip install pyarrow)") from e
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            yield from pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
        return
    for row in _read_jsonl(path):
        yield row["text"]


def _val_docs_full(ctx: Any, tok: Any, max_tokens: int) -> Iterator[tuple[list[int], int]]:
    """Validation documents from the staged validation shards, up to ``max_tokens`` tokens (whole documents)."""
    used = 0
    for path in sorted((Path(ctx.private_dir) / "val").iterdir()):
        for ids, n in iter_shard_documents(path, tok):
            if used >= max_tokens:
                return
            used += len(ids)
            yield ids, n


# ----------------------------------------------------------------------------------------------------------------
# evaluate

def evaluate(ctx: Any) -> dict[str, Any]:
    mini = ctx.variant == "mini"
    objective = "mini_core" if mini else "core"
    bundle = Path(ctx.private_dir) / "minicore" if mini else \
        _path_opt(ctx, "eval_bundle", "NANOCHAT_EVAL_BUNDLE", "the DCLM eval bundle")
    per_seed: list[dict[str, Any]] = []
    for seed in ctx.seeds:
        t0 = time.perf_counter()
        try:
            server = ctx.model_server(seed, module="gpt.py", factory="serve_model", artifact="model.pt",
                                      attrs=("vocab_size", "max_seq_len", "tokenizer", "meta"), methods=("log_probs",))
        except OutputError as e:
            raise RecipeFault(f"{e} (train() must call gpt.save_checkpoint(ctx.out_dir / 'model.pt', ...))") from None
        with server:
            lm = ServedLM(server, _opt(ctx, "probe_rate"), _opt(ctx, "min_probes"))
            factory = _tokenizer_factory(server.attrs)
            staged = ctx.train_dir if server.attrs.get("tokenizer") in NEEDS_STAGED_FILES else None
            with ctx.model_server(None, module="tokenizer.py", factory=factory, attrs=("name", "bos_id"),
                                  methods=("encode", "decode", "token_bytes"), data=staged) as tok_server:
                tok = RemoteTokenizer(tok_server, lm.vocab_size)
                res = nanochat_core.evaluate_core(
                    lm, tok, bundle, max_per_task=-1 if mini else int(_opt(ctx, "core_max_per_task")),
                    max_seq_len=lm.max_seq_len, batch_tokens=int(_opt(ctx, "batch_tokens")),
                    max_scored=max(1, MAX_ANSWER_FLOATS // lm.vocab_size),
                    log=lambda s: print(f"seed {seed}: {s}", flush=True))
                if mini:
                    texts = [d["text"] for d in _read_jsonl(Path(ctx.private_dir) / "heldout.jsonl")]
                    sample = texts[:20]
                    docs = _text_docs(tok, texts, int(_opt(ctx, "bpb_bytes")))
                else:
                    sample = ["The capital of France is Paris.\n", "café 123 — ok"]
                    docs = _val_docs_full(ctx, tok, int(_opt(ctx, "bpb_tokens")))
                bpb = bits_per_byte(lm, docs, tok.bos_id, lm.max_seq_len, lm.vocab_size)
                lm.finish()
                roundtrip = roundtrip_ok(tok, sample)
        meta = server.attrs.get("meta") if isinstance(server.attrs.get("meta"), dict) else {}
        per_seed.append({"core": res["core"], "results": res["results"], "centered": res["centered"], "bpb": bpb,
                         "causal": lm.causal, "leak": lm.leak, "probes": lm.probes, "normalized": lm.normalized,
                         "norm_error": lm.norm_error, "roundtrip": roundtrip, "steps": meta.get("steps"),
                         "tokens": meta.get("tokens"), "eval_s": time.perf_counter() - t0})
        print(f"seed {seed}: {objective} {res['core']:.4f} bpb {bpb:.4f} causal {lm.causal} ({lm.probes} probes, "
              f"leak {lm.leak:.3g}) normalized {lm.normalized} ({time.perf_counter() - t0:.1f}s)", flush=True)

    n = len(per_seed)
    metrics: dict[str, Any] = {
        objective: sum(s["core"] for s in per_seed) / n,
        f"{objective}_per_seed": [s["core"] for s in per_seed],
        "bpb": sum(s["bpb"] for s in per_seed) / n,
        "bpb_per_seed": [s["bpb"] for s in per_seed],
        "causal": all(s["causal"] for s in per_seed),
        "causal_max_leak": max(s["leak"] for s in per_seed),
        "causal_probes": sum(s["probes"] for s in per_seed),
        "logprobs_normalized": all(s["normalized"] for s in per_seed),
        "logprobs_max_error": max(s["norm_error"] for s in per_seed),
        "tokenizer_roundtrip": all(s["roundtrip"] for s in per_seed),
        "train_tokens": per_seed[0]["tokens"],
        "train_steps": per_seed[0]["steps"],
    }
    for label in per_seed[0]["results"]:
        metrics[f"acc/{label}"] = sum(s["results"][label] for s in per_seed) / n
        metrics[f"centered/{label}"] = sum(s["centered"][label] for s in per_seed) / n
    return metrics
