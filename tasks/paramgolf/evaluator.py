"""Parameter Golf evaluator: stages the data, then scores each seed's artifact file in this process.

stage(ctx)     mini: the corpus split by document -> public train.jsonl, private val.jsonl.
               full: symlinks to FineWeb train shards (public) and val shards (private), plus the
               SentencePiece byte-accounting tables computed from the tokenizer model (private).
evaluate(ctx)  for each seed: copies ``model.ptz`` alone into a fresh folder, rebuilds the model with the
               recipe's ``model.load_artifact`` (the in-memory model of the training process is gone), scores
               the validation split in bits per byte, runs the causality probe and the normalization check,
               and measures artifact bytes = every file of the recipe folder + the compressed model.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import pg_data  # noqa: E402

ARTIFACT = "model.ptz"
FULL_DATA_HELP = ("Fetch the challenge data with the public parameter-golf repository: "
                  "`python3 data/cached_challenge_fineweb.py --variant sp1024 --train-shards 10`, then set "
                  "PARAMGOLF_DATA_PATH to data/datasets/fineweb10B_sp1024 and PARAMGOLF_TOKENIZER_PATH to "
                  "data/tokenizers/fineweb_1024_bpe.model (see tasks/paramgolf/README.md).")


# --- staging -------------------------------------------------------------------------------------------------

def stage(ctx: Any) -> None:
    if ctx.variant == "full":
        _stage_full(ctx)
    else:
        _stage_mini(ctx)


def _stage_mini(ctx: Any) -> None:
    sys.path.insert(0, str(HERE.parent / "corpus"))
    import corpus

    train, val = corpus.split_documents(corpus.load_documents(), float(ctx.options.get("val_fraction", 0.1)))
    cap = ctx.options.get("val_max_bytes")
    with open(ctx.public_dir / "train.jsonl", "w", encoding="utf-8") as f:
        for d in train:
            f.write(json.dumps({"id": d["id"], "text": d["text"]}) + "\n")
    used = 0
    with open(ctx.private_dir / "val.jsonl", "w", encoding="utf-8") as f:
        for d in val:
            text = d["text"]
            if cap is not None:
                # A fixed prefix of the validation documents keeps CPU evaluation within its budget.
                text = text.encode("utf-8")[: max(0, int(cap) - used)].decode("utf-8", errors="ignore")
                if not text:
                    break
            used += len(text.encode("utf-8"))
            f.write(json.dumps({"id": d["id"], "text": text}) + "\n")


def _stage_full(ctx: Any) -> None:
    data = Path(str(ctx.options.get("data_path") or "")).expanduser()
    tok_model = Path(str(ctx.options.get("tokenizer_path") or "")).expanduser()
    train_files = sorted(data.glob("fineweb_train_*.bin")) if data.is_dir() else []
    val_files = sorted(data.glob("fineweb_val_*.bin")) if data.is_dir() else []
    if not train_files or not val_files:
        raise FileNotFoundError(f"no fineweb_train_*.bin / fineweb_val_*.bin shards under {data!s}. " + FULL_DATA_HELP)
    if not tok_model.is_file():
        raise FileNotFoundError(f"tokenizer model {tok_model!s} not found. " + FULL_DATA_HELP)
    for f in train_files:
        (ctx.public_dir / f.name).symlink_to(f.resolve())
    (ctx.private_dir / "val").mkdir(exist_ok=True)
    for f in val_files:
        (ctx.private_dir / "val" / f.name).symlink_to(f.resolve())
    base, space, boundary = pg_data.piece_byte_luts(pg_data.sentencepiece_pieces(tok_model))
    np.savez(ctx.private_dir / "byte_luts.npz", base=base, space=space, boundary=boundary)


# --- evaluation ----------------------------------------------------------------------------------------------

def recipe_bytes(workspace: Path) -> int:
    """Bytes of every file in the recipe folder: all of it ships with the artifact."""
    total = 0
    for root, dirs, files in os.walk(workspace):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", ".git")]
        total += sum((Path(root) / f).stat().st_size for f in files if f != ".git" and not f.endswith(".pyc"))
    return total


def _import_recipe_model(workspace: Path) -> Any:
    path = workspace / "model.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the recipe must define load_artifact() in model.py")
    sys.path.insert(0, str(workspace))
    spec = importlib.util.spec_from_file_location("model", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["model"] = mod
    spec.loader.exec_module(mod)
    return mod


def _mini_stream(art: Any, private_dir: Path) -> tuple[np.ndarray, int, bool, str]:
    """Validation stream ([BOS] + tokens per document), true byte count, and the exact-bytes verdict."""
    tok = art.tokenizer
    if tok is None:
        raise ValueError("the mini variant scores text: load_artifact() must return an object whose tokenizer is "
                         "not None (see tasks/paramgolf/README.md, recipe contract)")
    with open(private_dir / "val.jsonl", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    parts, n_bytes, reason = [], 0, ""
    for text in texts:
        raw = text.encode("utf-8")
        ids = list(tok.encode(text))
        n_bytes += len(raw)
        if not reason:
            bad = [i for i in ids if not 0 <= int(i) < art.vocab_size]
            if bad:
                reason = f"tokenizer produced id {bad[0]} outside the model's vocabulary of {art.vocab_size}"
            elif b"".join(tok.pieces[int(i)] for i in ids) != raw:
                reason = ("the tokenizer's pieces do not concatenate back to the document's UTF-8 bytes, so "
                          "bytes cannot be counted exactly (the tokenizer must be lossless)")
            elif tok.pieces[tok.bos_id] != b"":
                reason = "the BOS token must stand for zero bytes"
        parts.append(np.asarray([tok.bos_id] + ids, dtype=np.int64))
    stream = np.concatenate(parts)
    if reason:
        stream = np.clip(stream, 0, art.vocab_size - 1)
    return stream, n_bytes, not reason, reason


def evaluate(ctx: Any) -> dict:
    import torch

    if ctx.threads:
        torch.set_num_threads(int(ctx.threads))
    device = "cuda" if ctx.device == "cuda" and torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    workspace = Path(ctx.workspace)
    code_bytes = recipe_bytes(workspace)
    recipe = _import_recipe_model(workspace)
    batch = int(ctx.options.get("eval_batch_windows", 16 if device == "cpu" else 64))

    luts = stream_full = None
    if ctx.variant == "full":
        z = np.load(ctx.private_dir / "byte_luts.npz")
        luts = (z["base"], z["space"], z["boundary"])
        stream_full = pg_data.read_shards((ctx.private_dir / "val").glob("fineweb_val_*.bin")).astype(np.int64)
        if ctx.options.get("val_max_tokens"):
            stream_full = stream_full[: int(ctx.options["val_max_tokens"])]

    per_seed, losses, model_bytes = [], [], []
    verdicts = {"causal": [], "normalized": [], "exact_bytes": []}
    t0 = time.perf_counter()
    for seed in ctx.seeds:
        src = ctx.seed_dir(seed) / ARTIFACT
        if not src.is_file():
            raise FileNotFoundError(f"seed {seed}: the recipe wrote no {ARTIFACT} in its output folder "
                                    f"({ctx.seed_dir(seed)}); train(ctx) must save the artifact to ctx.out_dir")
        model_bytes.append(src.stat().st_size)
        with tempfile.TemporaryDirectory() as tmp:
            # Only the artifact file travels: nothing else the training process left behind can be read.
            path = Path(shutil.copy(src, Path(tmp) / ARTIFACT))
            art = recipe.load_artifact(path, device=device)
        if ctx.variant == "full":
            stream = stream_full
            true_bytes = int(pg_data.target_bytes(stream, luts).sum())
            exact, exact_why = True, ""
            if art.vocab_size < len(luts[0]):
                exact, exact_why = False, (f"the model's vocabulary ({art.vocab_size}) is smaller than the "
                                           f"tokenizer's ({len(luts[0])}): it cannot score every token")
                stream = np.clip(stream, 0, art.vocab_size - 1)
        else:
            stream, true_bytes, exact, exact_why = _mini_stream(art, ctx.private_dir)
        # A stride longer than the window would skip tokens: it is clamped, never trusted.
        seq_len = max(1, int(art.eval_seq_len))
        stride = max(1, min(int(art.eval_stride), seq_len))
        with torch.inference_mode():
            res = pg_data.score_stream(art.log_probs, stream, seq_len, stride, batch, torch, device)
            causal, causal_why = pg_data.causality_probe(art.log_probs, stream, seq_len, art.vocab_size, torch,
                                                         device, seed=seed)
        bpb = pg_data.bits_per_byte(res["nll_sum"], true_bytes)
        per_seed.append(bpb)
        losses.append(res["val_loss"])
        verdicts["causal"].append((causal, causal_why))
        verdicts["normalized"].append((res["normalized"], res["normalization_reason"]))
        verdicts["exact_bytes"].append((exact, exact_why))

    metrics: dict[str, Any] = {
        "val_bpb": float(np.mean(per_seed)), "val_bpb_per_seed": per_seed, "val_loss": float(np.mean(losses)),
        "artifact_bytes": code_bytes + max(model_bytes), "code_bytes": code_bytes,
        "model_bytes": max(model_bytes), "val_tokens": int(stream.size - 1), "val_bytes": int(true_bytes),
        "eval_score_s": round(time.perf_counter() - t0, 2),
    }
    for key, results in verdicts.items():
        metrics[key] = all(ok for ok, _ in results)
        metrics[f"{key}_reason"] = next((why for ok, why in results if not ok), "")
    if not math.isfinite(metrics["val_bpb"]):
        metrics["val_bpb"] = float("inf")
    return metrics
