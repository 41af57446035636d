"""NanoChat task evaluator: stages data, then scores a trained checkpoint on CORE (full) or mini-CORE (mini).

Runs in the harness' stage/evaluate processes, never in the recipe's. It loads the model code (``gpt.py``,
``tokenizer.py``) from the trial's workspace and the weights from ``<outputs>/seed-<n>/model.pt``.

Options (the ``evaluator`` fixture's ``options``; environment variables fill the paths when the option is unset):
- ``eval_bundle`` / ``NANOCHAT_EVAL_BUNDLE``   full: the unzipped DCLM ``eval_bundle/`` folder.
- ``data_dir`` / ``NANOCHAT_DATA_DIR``         full: pretraining shards (see README for formats).
- ``core_max_per_task``                        full: items per CORE task (-1 = all, nanochat's default).
- ``bpb_tokens``                               full: validation tokens for bpb.
- ``corpus_jsonl``                             mini: another corpus file in tasks/corpus' format (tests use it).
- ``val_fraction``, ``eval_seed``, ``train_seed``, ``items_per_task``, ``procedural_blocks``, ``bpb_bytes``  mini.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import nanochat_core  # noqa: E402
import nanochat_minicore  # noqa: E402

MINI_DEFAULTS: dict[str, Any] = dict(val_fraction=0.1, eval_seed=20240611, train_seed=7, items_per_task=200,
                                     procedural_blocks=4000, bpb_bytes=60_000, batch_tokens=8192)
FULL_DEFAULTS: dict[str, Any] = dict(core_max_per_task=-1, bpb_tokens=2 ** 21, batch_tokens=65536)
SHARD_SUFFIXES = (".bin", ".parquet", ".jsonl", ".jsonl.gz")


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
    pub, priv = Path(ctx.public_dir), Path(ctx.private_dir)
    _write_jsonl(pub / "train_docs.jsonl", train)
    _write_jsonl(pub / "procedural_train.jsonl", blocks)
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
    for folder, files in ((Path(ctx.public_dir) / "shards", train), (Path(ctx.private_dir) / "val", val)):
        folder.mkdir(parents=True, exist_ok=True)
        for p in files:
            link = folder / p.name
            if not link.exists():
                link.symlink_to(p)
    print(f"staged full: {len(train)} train shards, validation {[p.name for p in val]}, bundle {bundle}", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Model loading from the workspace

def _load_module(path: Path, name: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"the recipe has no {path.name} ({path}); the evaluator loads the model code from it")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the class body runs
    spec.loader.exec_module(mod)
    return mod


def load_trained(ctx: Any, seed: int, device: str) -> tuple[Any, Any, dict]:
    """(model, tokenizer, meta) for one seed, with the workspace's own model and tokenizer code."""
    ws = Path(ctx.workspace)
    gpt = _load_module(ws / "gpt.py", "_nanochat_recipe_gpt")
    tokmod = _load_module(ws / "tokenizer.py", "_nanochat_recipe_tokenizer")
    ckpt = ctx.seed_dir(seed) / "model.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"seed {seed}: the recipe wrote no checkpoint at {ckpt} (train() must call "
                                f"gpt.save_checkpoint(ctx.out_dir / 'model.pt', ...))")
    model, meta = gpt.load_model(ckpt, device)
    tok = tokmod.get_tokenizer(meta.get("tokenizer", "bytes"), cache_dir=Path(ctx.private_dir) / "cache")
    return model, tok, meta


# ----------------------------------------------------------------------------------------------------------------
# Checks and bits per byte

@torch.no_grad()
def causality_probe(model: Any, vocab: int, device: str, seed: int = 0) -> tuple[bool, float]:
    """Change the second half of a sequence; the logits of the first half must not move."""
    g = torch.Generator().manual_seed(seed)
    t = min(int(getattr(model, "max_seq_len", 64)), 64)
    idx = torch.randint(0, min(vocab, 256), (2, t), generator=g)
    other = idx.clone()
    other[:, t // 2:] = torch.randint(0, min(vocab, 256), (2, t - t // 2), generator=g)
    a = model(idx.to(device)).float()[:, :t // 2]
    b = model(other.to(device)).float()[:, :t // 2]
    diff = (a - b).abs().max().item()
    return diff <= 1e-3 * max(1.0, a.abs().max().item()), diff


def roundtrip_ok(tok: Any, texts: list[str]) -> bool:
    return all(tok.decode(tok.encode(t)) == t for t in texts)


@torch.no_grad()
def bits_per_byte(model: Any, docs: Iterator[tuple[list[int], int]], device: str, bos_id: int,
                  batch_rows: int = 16, autocast: Any = None) -> float:
    """Summed next-token loss (nats) over the documents' tokens, in bits per UTF-8 byte of the text.

    ``docs`` yields (token ids without BOS, byte count); each document starts from BOS and is cut into windows
    of the model's context (non-overlapping, as nanochat's evaluate_bpb).
    """
    t = int(model.max_seq_len)
    windows: list[list[int]] = []
    nbytes = 0
    for ids, n in docs:
        seq = [bos_id] + list(ids)
        nbytes += n
        for s in range(0, len(seq) - 1, t):
            windows.append(seq[s:s + t + 1])
    total = 0.0
    for i in range(0, len(windows), batch_rows):
        chunk = windows[i:i + batch_rows]
        width = max(len(w) for w in chunk) - 1
        x = torch.full((len(chunk), width), bos_id, dtype=torch.long)
        y = torch.full((len(chunk), width), -1, dtype=torch.long)
        for r, w in enumerate(chunk):
            x[r, :len(w) - 1] = torch.tensor(w[:-1])
            y[r, :len(w) - 1] = torch.tensor(w[1:])
        y[y == bos_id] = -1
        with autocast or torch.autocast("cpu", enabled=False):
            loss = model(x.to(device), y.to(device), loss_reduction="sum")
        total += float(loss)
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
    import numpy as np

    header = np.fromfile(path, dtype=np.int32, count=BIN_HEADER_INTS)
    if header.size < 3 or header[0] != BIN_MAGIC:
        raise ValueError(f"{path}: not a .bin token shard (magic {header[:1]} != {BIN_MAGIC})")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=BIN_HEADER_INTS * 4, shape=(int(header[2]),))


def iter_shard_documents(path: Path, tok: Any) -> Iterator[tuple[list[int], int]]:
    """(token ids without BOS, UTF-8 byte count) per document of one validation shard."""
    name = path.name
    if name.endswith(".bin"):
        import numpy as np

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
    device = ctx.device
    objective = "mini_core" if mini else "core"
    bundle = Path(ctx.private_dir) / "minicore" if mini else \
        _path_opt(ctx, "eval_bundle", "NANOCHAT_EVAL_BUNDLE", "the DCLM eval bundle")
    per_seed: list[dict[str, Any]] = []
    for seed in ctx.seeds:
        t0 = time.perf_counter()
        model, tok, meta = load_trained(ctx, seed, device)
        use_bf16 = device == "cuda"
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else None

        def forward(ids: torch.Tensor) -> torch.Tensor:
            with autocast or torch.autocast("cpu", enabled=False):
                return model(ids)

        causal, leak = causality_probe(model, model.config.vocab_size, device, seed)
        res = nanochat_core.evaluate_core(forward, tok, bundle, device,
                                          max_per_task=-1 if mini else int(_opt(ctx, "core_max_per_task")),
                                          max_seq_len=model.max_seq_len, batch_tokens=int(_opt(ctx, "batch_tokens")),
                                          log=lambda s: print(f"seed {seed}: {s}", flush=True))
        if mini:
            texts = [d["text"] for d in _read_jsonl(Path(ctx.private_dir) / "heldout.jsonl")]
            sample = texts[:20]
            docs = _text_docs(tok, texts, int(_opt(ctx, "bpb_bytes")))
        else:
            sample = ["The capital of France is Paris.\n", "café 123 — ok"]
            docs = _val_docs_full(ctx, tok, int(_opt(ctx, "bpb_tokens")))
        bpb = bits_per_byte(model, docs, device, tok.bos_id, autocast=autocast)
        per_seed.append({"core": res["core"], "results": res["results"], "centered": res["centered"], "bpb": bpb,
                         "causal": causal, "leak": leak, "roundtrip": roundtrip_ok(tok, sample),
                         "steps": meta.get("steps"), "tokens": meta.get("tokens"),
                         "eval_s": time.perf_counter() - t0})
        print(f"seed {seed}: {objective} {res['core']:.4f} bpb {bpb:.4f} causal {causal} "
              f"({time.perf_counter() - t0:.1f}s)", flush=True)

    n = len(per_seed)
    metrics: dict[str, Any] = {
        objective: sum(s["core"] for s in per_seed) / n,
        f"{objective}_per_seed": [s["core"] for s in per_seed],
        "bpb": sum(s["bpb"] for s in per_seed) / n,
        "bpb_per_seed": [s["bpb"] for s in per_seed],
        "causal": all(s["causal"] for s in per_seed),
        "causal_max_leak": max(s["leak"] for s in per_seed),
        "tokenizer_roundtrip": all(s["roundtrip"] for s in per_seed),
        "train_tokens": per_seed[0]["tokens"],
        "train_steps": per_seed[0]["steps"],
    }
    for label in per_seed[0]["results"]:
        metrics[f"acc/{label}"] = sum(s["results"][label] for s in per_seed) / n
        metrics[f"centered/{label}"] = sum(s["centered"][label] for s in per_seed) / n
    return metrics
