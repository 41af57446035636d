"""Parameter Golf evaluator: stages the data, then scores each seed's artifact file without running recipe code.

stage(ctx)     mini: the corpus split by document -> train.jsonl (ctx.train_dir), val.jsonl (ctx.private_dir).
               full: the FineWeb train shards (ctx.train_dir, hard links or copies: the train sandbox cannot
               follow a link out of its folder), links to the val shards and the SentencePiece byte-accounting
               tables computed from the tokenizer model (ctx.private_dir). Nothing goes to ctx.test_dir.
evaluate(ctx)  for each seed, the recipe's ``model.load_artifact`` rebuilds the model from ``model.ptz`` alone in
               sandboxed model servers that see the clean checkout and that one file, never the validation data:
               - mini: a tokenizer server encodes the validation documents and is closed before any model server
                 starts, so the code that saw the text cannot hand it to the model that predicts it;
               - a model server answers ``log_probs`` for every scoring batch (bits per byte and the
                 normalization check are computed here from its answers);
               - a second model server, which never sees a real batch, answers the causality probe's twins of a
                 few randomly chosen scoring batches (``pytest_autoresearch.causality``).
               artifact bytes = the recipe files as the harness counted them (ctx.code_bytes) + model.ptz.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pytest_autoresearch.causality import CausalProbe, unpredictable_rng

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import pg_data  # noqa: E402
from pg_data import RecipeFault  # noqa: E402

ARTIFACT = "model.ptz"
MODEL_ATTRS = ("vocab_size", "eval_seq_len", "eval_stride")
FULL_DATA_HELP = ("Fetch the challenge data with the public parameter-golf repository: "
                  "`python3 data/cached_challenge_fineweb.py --variant sp1024 --train-shards 10`, then set "
                  "PARAMGOLF_DATA_PATH to data/datasets/fineweb10B_sp1024 and PARAMGOLF_TOKENIZER_PATH to "
                  "data/tokenizers/fineweb_1024_bpe.model (see tasks/paramgolf/README.md).")
# Scoring batches that get a causality twin: this share of them, and at least this many.
PROBE_RATE = 0.02
MIN_PROBES = 4


# --- staging -------------------------------------------------------------------------------------------------

def stage(ctx: Any) -> None:
    """Training data to ``ctx.train_dir`` (the recipe's ``data_dir``), validation data to ``ctx.private_dir``."""
    if ctx.variant == "full":
        _stage_full(ctx)
    else:
        _stage_mini(ctx)


def _stage_mini(ctx: Any) -> None:
    sys.path.insert(0, str(HERE.parent / "corpus"))
    import corpus

    train, val = corpus.split_documents(corpus.load_documents(), float(ctx.options.get("val_fraction", 0.1)))
    cap = ctx.options.get("val_max_bytes")
    with open(ctx.train_dir / "train.jsonl", "w", encoding="utf-8") as f:
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
        _place(f, Path(ctx.train_dir) / f.name)
    (ctx.private_dir / "val").mkdir(exist_ok=True)
    for f in val_files:  # only this process reads them: a link will do
        (ctx.private_dir / "val" / f.name).symlink_to(f.resolve())
    base, space, boundary = pg_data.piece_byte_luts(pg_data.sentencepiece_pieces(tok_model))
    np.savez(ctx.private_dir / "byte_luts.npz", base=base, space=space, boundary=boundary)


def _place(src: Path, dest: Path) -> None:
    """A training shard the train sandbox can read: a hard link (same file system) or a copy."""
    try:
        os.link(src.resolve(), dest)
    except OSError:
        shutil.copyfile(src, dest)


# --- evaluation ----------------------------------------------------------------------------------------------

def _int_attr(attrs: dict, name: str) -> int:
    value = attrs.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecipeFault(f"load_artifact() returned an object whose {name} is {value!r}, not an integer")
    return int(value)


def encode_validation(ctx: Any, seed: int) -> tuple[list[bytes], list[np.ndarray], list[bytes], int]:
    """(documents as UTF-8, their token ids, the tokenizer's pieces, its BOS id), from a tokenizer server of its own."""
    with open(ctx.private_dir / "val.jsonl", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    from pytest_autoresearch.serve import ModelServerError

    try:
        tok = ctx.model_server(seed, module="model.py", factory="load_artifact", artifact=ARTIFACT,
                               attrs=("tokenizer.pieces", "tokenizer.bos_id"), methods=("tokenizer.encode",))
    except ModelServerError as e:
        if "AttributeError" not in str(e):
            raise
        raise ModelServerError(f"{e}\nThe mini variant scores text: load_artifact() must return an object whose "
                               f"tokenizer has encode(str) -> list[int], pieces: list[bytes] and bos_id (see "
                               f"tasks/paramgolf/README.md, recipe contract)") from None
    with tok:
        pieces, bos = tok.attrs["tokenizer.pieces"], tok.attrs["tokenizer.bos_id"]
        ids = []
        for text in texts:  # one document per request keeps every answer small
            try:
                ids.append(np.asarray(tok.call("tokenizer.encode", text), dtype=np.int64).reshape(-1))
            except (TypeError, ValueError, OverflowError) as e:
                raise RecipeFault(f"tokenizer.encode must return a list of token ids ({e})") from None
    if not isinstance(pieces, list) or not all(isinstance(p, bytes) for p in pieces):
        raise RecipeFault("tokenizer.pieces must be a list of bytes, one per token id")
    if isinstance(bos, bool) or not isinstance(bos, int) or not 0 <= bos < len(pieces):
        raise RecipeFault(f"tokenizer.bos_id {bos!r} is not a token id (the tokenizer has {len(pieces)} pieces)")
    return [t.encode("utf-8") for t in texts], ids, pieces, bos


def mini_stream(docs: list[bytes], ids: list[np.ndarray], pieces: list[bytes], bos: int,
                vocab_size: int) -> tuple[np.ndarray, int, bool, str]:
    """Validation stream ([BOS] + tokens per document), true byte count, and the exact-bytes verdict."""
    reason = ""
    for raw, doc in zip(docs, ids):
        bad = doc[(doc < 0) | (doc >= min(vocab_size, len(pieces)))]
        if bad.size:
            reason = (f"tokenizer produced id {int(bad[0])} outside the model's vocabulary of {vocab_size} "
                      f"(or its own {len(pieces)} pieces)")
        elif b"".join(pieces[i] for i in doc.tolist()) != raw:
            reason = ("the tokenizer's pieces do not concatenate back to the document's UTF-8 bytes, so "
                      "bytes cannot be counted exactly (the tokenizer must be lossless)")
        elif pieces[bos] != b"" or bos >= vocab_size:
            reason = "the BOS token must stand for zero bytes and be in the model's vocabulary"
        if reason:
            break
    stream = np.concatenate([np.concatenate([[bos], doc]).astype(np.int64) for doc in ids])
    if reason:
        stream = np.clip(stream, 0, vocab_size - 1)
    return stream, sum(len(d) for d in docs), not reason, reason


def _model_path(ctx: Any, seed: int) -> Path:
    from pytest_autoresearch.runtime import OutputError

    try:
        return ctx.output(seed, ARTIFACT)
    except OutputError as e:
        raise RecipeFault(f"{e}: train(ctx) must save the artifact to ctx.out_dir/{ARTIFACT}") from None


def evaluate(ctx: Any) -> dict:
    import torch

    if ctx.threads:
        torch.set_num_threads(int(ctx.threads))
    device = "cuda" if ctx.device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    batch = int(ctx.options.get("eval_batch_windows", 16 if device == "cpu" else 64))
    probe_rate = float(ctx.options.get("probe_rate", PROBE_RATE))
    min_probes = int(ctx.options.get("min_probes", MIN_PROBES))
    if ctx.code_bytes is None:
        raise ValueError("the harness gave no code_bytes: artifact bytes cannot be measured")

    luts = stream_full = None
    if ctx.variant == "full":
        z = np.load(ctx.private_dir / "byte_luts.npz")
        luts = (z["base"], z["space"], z["boundary"])
        stream_full = pg_data.read_shards((ctx.private_dir / "val").glob("fineweb_val_*.bin")).astype(np.int64)
        if ctx.options.get("val_max_tokens"):
            stream_full = stream_full[: int(ctx.options["val_max_tokens"])]

    per_seed, losses, model_bytes, probes = [], [], [], 0
    verdicts: dict[str, list[tuple[bool, str]]] = {"causal": [], "normalized": [], "exact_bytes": []}
    t0 = time.perf_counter()
    for seed in ctx.seeds:
        model_bytes.append(os.lstat(_model_path(ctx, seed)).st_size)
        encoded = encode_validation(ctx, seed) if ctx.variant != "full" else None
        spec = dict(module="model.py", factory="load_artifact", artifact=ARTIFACT, attrs=MODEL_ATTRS,
                    methods=("log_probs",))
        with ctx.model_server(seed, **spec) as model, ctx.model_server(seed, **spec) as twin:
            if twin.attrs != model.attrs:
                raise RecipeFault(f"two loads of the same artifact disagree: {model.attrs} vs {twin.attrs}")
            vocab = _int_attr(model.attrs, "vocab_size")
            if vocab < 1:
                raise RecipeFault(f"vocab_size is {vocab}")
            if encoded is not None:
                stream, true_bytes, exact, exact_why = mini_stream(*encoded, vocab)
            else:
                assert stream_full is not None and luts is not None
                stream = stream_full
                true_bytes = int(pg_data.target_bytes(stream, luts).sum())
                exact, exact_why = True, ""
                if vocab < len(luts[0]):
                    exact, exact_why = False, (f"the model's vocabulary ({vocab}) is smaller than the "
                                               f"tokenizer's ({len(luts[0])}): it cannot score every token")
                    stream = np.clip(stream, 0, vocab - 1)
            # A stride longer than the window would skip tokens: it is clamped, never trusted.
            seq_len = max(1, _int_attr(model.attrs, "eval_seq_len"))
            stride = max(1, min(_int_attr(model.attrs, "eval_stride"), seq_len))
            n_batches = len(pg_data.scoring_batches(stream.size, seq_len, stride, batch))
            shape = lambda x: (*x.shape, vocab)  # noqa: E731
            probe = CausalProbe(lambda x: pg_data.as_log_probs(twin.call("log_probs", x), shape(x), torch, device),
                                n_batches, vocab, probes=max(min_probes, math.ceil(probe_rate * n_batches)),
                                rng=unpredictable_rng(seed))
            res = pg_data.score_stream(lambda x: model.call("log_probs", x), stream, seq_len, stride, batch,
                                       vocab, torch, device, probe=probe)
        probes += probe.checked
        per_seed.append(pg_data.bits_per_byte(res["nll_sum"], true_bytes))
        losses.append(res["val_loss"])
        verdicts["causal"].append((probe.ok, probe.reason))
        verdicts["normalized"].append((res["normalized"], res["normalization_reason"]))
        verdicts["exact_bytes"].append((exact, exact_why))

    metrics: dict[str, Any] = {
        "val_bpb": float(np.mean(per_seed)), "val_bpb_per_seed": per_seed, "val_loss": float(np.mean(losses)),
        "artifact_bytes": int(ctx.code_bytes) + max(model_bytes), "code_bytes": int(ctx.code_bytes),
        "model_bytes": max(model_bytes), "val_tokens": int(stream.size - 1), "val_bytes": int(true_bytes),
        "causal_probes": probes, "eval_score_s": round(time.perf_counter() - t0, 2),
    }
    for key, results in verdicts.items():
        metrics[key] = all(ok for ok, _ in results)
        metrics[f"{key}_reason"] = next((why for ok, why in results if not ok), "")
    if not math.isfinite(metrics["val_bpb"]):
        metrics["val_bpb"] = float("inf")
    return metrics
