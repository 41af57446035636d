"""The Parameter Golf rules, exercised on real subprocesses with small edits of the recipes (as an agent would
make them): the size cap, the causality probe, the normalization check, scoring of the artifact file, the
shard format, and the bits-per-byte arithmetic."""
from __future__ import annotations

import importlib.util
import io
import json
import math
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_autoresearch.edits import SurfaceViolation, apply_edits, check_forbidden, check_surface
from pytest_autoresearch.legality import run_checks
from pytest_autoresearch.runner import run_phase, scrubbed_env

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import pg_data  # noqa: E402
import test_paramgolf as task  # noqa: E402

MINI, FULL = HERE / "recipe_mini", HERE / "recipe_full"
FAST = [("iterations = 250", "iterations = 3")]
VAL_BYTES = 16_000  # a prefix of the validation split keeps these tests fast; the task scores all of it


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _recipe(tmp: Path, name: str, src: Path = MINI, **edits: list[tuple[str, str]]) -> Path:
    """A copy of a recipe with exact-once text replacements per file (``train_py=[(old, new)]``)."""
    dst = tmp / name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    for key, pairs in edits.items():
        f = dst / key.replace("_py", ".py")
        text = f.read_text()
        for old, new in pairs:
            assert text.count(old) == 1, f"{old!r} must occur once in {f.name}"
            text = text.replace(old, new)
        f.write_text(text)
    return dst


class Runner:
    """Stages the mini data once and runs recipe/evaluator phases against it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pub, self.priv, self.cache = root / "public", root / "private", root / "cache"
        for d in (self.pub, self.priv, self.cache, root / "home"):
            d.mkdir(parents=True, exist_ok=True)
        # Passive OpenMP waiting keeps 2-thread runs fast when other processes share the cores.
        self.env = scrubbed_env(self.cache, root / "home", threads=2, extra={"OMP_WAIT_POLICY": "PASSIVE"})
        self.n = 0

    def ctx(self, recipe: Path, out: Path, variant: str = "mini") -> dict:
        return dict(seeds=[0], outputs_dir=str(out), public_dir=str(self.pub), private_dir=str(self.priv),
                    cache_dir=str(self.cache), device="cpu", variant=variant, workspace=str(recipe),
                    preload=["torch"], threads=2, evaluator_script=str(HERE / "evaluator.py"),
                    options={"val_fraction": 0.1, "val_max_bytes": VAL_BYTES},
                    artifact_bytes=task.MINI_ARTIFACT_BYTES)

    def phase(self, phase: str, recipe: Path, out: Path, variant: str = "mini", limit: float = 180):
        self.n += 1
        r = run_phase(phase, self.ctx(recipe, out, variant), limit_s=limit, work_dir=self.root / f"w{self.n}",
                      env=self.env)
        assert r.ok, f"{phase} failed: {r.deepest_error()}\n{r.log_tail()}"
        return r

    def train_eval(self, recipe: Path, name: str) -> tuple[dict, Path]:
        out = self.root / "out" / name
        self.phase("train", recipe, out)
        return self.phase("evaluate", recipe, out).result, out


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    r = Runner(tmp_path_factory.mktemp("paramgolf"))
    r.phase("stage", MINI, r.root / "out" / "stage")
    return r


@pytest.fixture(scope="module")
def baseline_fast(runner: Runner, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    recipe = _recipe(tmp_path_factory.mktemp("recipes"), "fast", train_py=FAST)
    metrics, out = runner.train_eval(recipe, "fast")
    return metrics, out, recipe


MINI_BUDGET = task.Budget(train_seconds=60, eval_seconds=60, artifact_bytes=task.MINI_ARTIFACT_BYTES)


def _checks() -> tuple:
    return tuple(task.legality_checks())


# --- staging: the recipe never gets validation data ------------------------------------------------------

def test_stage_splits_by_document_and_keeps_validation_private(runner: Runner) -> None:
    train_ids = {json.loads(l)["id"] for l in open(runner.pub / "train.jsonl")}
    val_ids = {json.loads(l)["id"] for l in open(runner.priv / "val.jsonl")}
    assert train_ids and val_ids and train_ids.isdisjoint(val_ids)
    assert sorted(p.name for p in runner.pub.iterdir()) == ["train.jsonl"]


# --- legal baseline shape, scored from its artifact ---------------------------------------------------------

def test_fast_baseline_is_legal_and_bytes_are_measured(runner: Runner, baseline_fast: tuple[dict, Path, Path]) -> None:
    metrics, out, recipe = baseline_fast
    assert metrics["causal"] and metrics["normalized"] and metrics["exact_bytes"], metrics
    assert 2.0 < metrics["val_bpb"] < 9.0
    files = sum(f.stat().st_size for f in recipe.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
    model = (out / "seed-0" / "model.ptz").stat().st_size
    assert metrics["code_bytes"] == files and metrics["model_bytes"] == model
    assert metrics["artifact_bytes"] == files + model
    assert run_checks(_checks(), metrics, MINI_BUDGET) is None
    # Every validation byte is scored: the byte count is the UTF-8 size of the staged validation text.
    val = [json.loads(line)["text"] for line in open(runner.priv / "val.jsonl")]
    assert metrics["val_bytes"] == sum(len(t.encode()) for t in val) == VAL_BYTES


def test_score_comes_from_the_artifact_file(runner: Runner, baseline_fast: tuple[dict, Path, Path]) -> None:
    """Zeroing one quantized matrix inside model.ptz changes the score: the evaluator reads the file, not the
    training process's model (which is gone by then)."""
    metrics, out, recipe = baseline_fast
    m = _load(recipe / "model.py", "pg_model_roundtrip")
    path = out / "seed-0" / "model.ptz"
    payload = torch.load(io.BytesIO(m.decompress(path.read_bytes())), weights_only=True)
    q = payload["weights"]["quantized"]
    name = next(n for n in q if "mlp.fc" in n)
    q[name] = torch.full_like(q[name], 127)
    buf = io.BytesIO()
    torch.save(payload, buf)
    path.write_bytes(m.compress(buf.getvalue(), "zlib"))
    corrupted = runner.phase("evaluate", recipe, out).result
    assert corrupted["model_bytes"] == path.stat().st_size
    assert abs(corrupted["val_bpb"] - metrics["val_bpb"]) > 1e-3


# --- size cap ---------------------------------------------------------------------------------------------------

def test_doubling_width_is_size_blocked(runner: Runner, tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "wide", train_py=FAST + [("model_dim = 64", "model_dim = 128")])
    metrics, _ = runner.train_eval(recipe, "wide")
    assert metrics["artifact_bytes"] > task.MINI_ARTIFACT_BYTES
    label, reason = run_checks(_checks(), metrics, MINI_BUDGET)
    assert label == "size_blocked" and "cap 170,000" in reason


# --- causality and normalization ----------------------------------------------------------------------------

def test_causality_probe_catches_a_model_that_peeks_ahead(runner: Runner, tmp_path: Path) -> None:
    peek = ("        x = x0 = rms_norm(self.tok_emb(input_ids))",
            "        x = x0 = rms_norm(self.tok_emb(input_ids) + self.tok_emb(input_ids.roll(-1, 1)))")
    recipe = _recipe(tmp_path, "peek", train_py=FAST, model_py=[peek])
    metrics, _ = runner.train_eval(recipe, "peek")
    assert metrics["causal"] is False and "has not been given" in metrics["causal_reason"]
    label, reason = run_checks(_checks(), metrics, MINI_BUDGET)
    assert label == "gate_miss" and reason.startswith("causal")


def test_unnormalized_output_is_a_gate_miss(runner: Runner, baseline_fast: tuple[dict, Path, Path],
                                             tmp_path: Path) -> None:
    """A model that inflates its log-probs would 'improve' bpb; the normalization check rejects it."""
    honest, out, recipe = baseline_fast
    cheat = ("    return F.log_softmax(model(input_ids).float() / temperature, -1)",
             "    return F.log_softmax(model(input_ids).float() / temperature, -1) + 0.5")
    workspace = _recipe(tmp_path, "inflate", src=recipe, model_py=[cheat])
    metrics = runner.phase("evaluate", workspace, out).result
    assert metrics["val_bpb"] < honest["val_bpb"]
    assert metrics["normalized"] is False
    label, reason = run_checks(_checks(), metrics, MINI_BUDGET)
    assert label == "gate_miss" and "logsumexp" in reason


def test_probe_and_normalization_on_hand_made_models() -> None:
    vocab, stream = 7, np.arange(64) % 7

    def causal(x: torch.Tensor) -> torch.Tensor:  # depends on the cumulative sum of past tokens only
        h = x.float().cumsum(1)[..., None] * torch.arange(vocab)
        return torch.log_softmax(torch.sin(h), -1)

    def peeks(x: torch.Tensor) -> torch.Tensor:
        return causal(x.roll(-1, 1))

    def leaks_across_batch(x: torch.Tensor) -> torch.Tensor:
        return causal(x + x.flip(0))

    assert pg_data.causality_probe(causal, stream, 16, vocab, torch) == (True, "")
    assert pg_data.causality_probe(peeks, stream, 16, vocab, torch)[0] is False
    assert pg_data.causality_probe(leaks_across_batch, stream, 16, vocab, torch)[0] is False
    ok = pg_data.score_stream(causal, stream, 16, 8, 4, torch)
    bad = pg_data.score_stream(lambda x: causal(x) + 0.1, stream, 16, 8, 4, torch)
    assert ok["normalized"] and not bad["normalized"] and ok["tokens"] == 63


# --- shard format -------------------------------------------------------------------------------------------------

def test_shard_reader_on_real_format_files(tmp_path: Path) -> None:
    a, b = np.arange(0, 1000, dtype=np.uint16), np.array([65535, 0, 7], dtype=np.uint16)
    pg_data.write_shard(tmp_path / "fineweb_train_000000.bin", a)
    pg_data.write_shard(tmp_path / "fineweb_train_000001.bin", b)
    raw = (tmp_path / "fineweb_train_000000.bin").read_bytes()
    assert len(raw) == 1024 + 2 * 1000
    assert np.frombuffer(raw[:12], "<i4").tolist() == [20240520, 1, 1000]
    assert np.frombuffer(raw[1024:1028], "<u2").tolist() == [0, 1]
    assert pg_data.read_shard(tmp_path / "fineweb_train_000000.bin").tolist() == a.tolist()
    assert pg_data.read_shards(tmp_path.glob("*.bin")).tolist() == a.tolist() + b.tolist()

    # The full recipe's own reader (it cannot import the evaluator's) agrees, and its stream wraps around.
    sys.path.insert(0, str(FULL))
    try:
        recipe = _load(FULL / "train.py", "pg_full_train")
    finally:
        sys.path.remove(str(FULL))
    assert recipe.read_shard(tmp_path / "fineweb_train_000001.bin").tolist() == [65535, 0, 7]
    ts = recipe.TokenStream(str(tmp_path / "fineweb_train_*.bin"))
    assert ts.take(998).tolist() == list(range(998))
    assert ts.take(6).tolist() == [998, 999, 65535, 0, 7, 0]

    bad = tmp_path / "bad.bin"
    bad.write_bytes(raw[:4].replace(np.int32(20240520).tobytes(), np.int32(1).tobytes()) + raw[4:])
    with pytest.raises(ValueError, match="bad shard header"):
        pg_data.read_shard(bad)
    short = tmp_path / "short.bin"
    short.write_bytes(raw[:-2])
    with pytest.raises(ValueError, match="header says 1000 tokens"):
        pg_data.read_shard(short)
    with pytest.raises(ValueError):
        recipe.read_shard(short)


# --- bits-per-byte arithmetic ------------------------------------------------------------------------------------

def test_bpb_arithmetic_by_hand() -> None:
    # 100 bytes at 8 bits each.
    assert pg_data.bits_per_byte(100 * 8 * math.log(2), 100) == pytest.approx(8.0)
    # A uniform model over 256 byte tokens costs exactly 8 bits per byte, whatever the windowing.
    stream = np.arange(41) % 256
    for seq_len, stride in ((8, 8), (8, 3), (64, 64)):
        res = pg_data.score_stream(lambda x: torch.full((*x.shape, 256), -math.log(256)), stream, seq_len, stride,
                                   2, torch)
        assert res["tokens"] == 40
        assert pg_data.bits_per_byte(res["nll_sum"], 40) == pytest.approx(8.0)
    # Every target scored exactly once for any window shape.
    for n, seq_len, stride in ((10, 4, 4), (10, 4, 1), (3, 8, 8), (1000, 128, 64)):
        scored = [i for s, e, f in pg_data.windows(n, seq_len, stride) for i in range(max(s + 1, f), e + 1)]
        assert scored == list(range(1, n))


def test_sentencepiece_byte_accounting_on_a_hand_made_piece_table() -> None:
    pieces = [("<unk>", "unknown"), ("<s>", "control"), ("</s>", "control"), ("<0x41>", "byte"),
              ("\u2581the", "normal"), ("\u2581", "normal"), ("cat", "normal"), ("\u00e9", "normal")]
    luts = pg_data.piece_byte_luts(pieces)
    assert luts[0].tolist() == [0, 0, 0, 1, 3, 0, 3, 2]
    # <s> ▁the cat ▁ é <0x41> </s> ▁the: the leading space counts unless the previous token is a boundary.
    stream = np.array([1, 4, 6, 5, 7, 3, 2, 4])
    assert pg_data.target_bytes(stream, luts).tolist() == [0, 3, 3, 1, 2, 1, 0, 3]
    # 13 bytes; 7 targets at 2 nats each -> 14 / ln 2 / 13 bits per byte.
    assert pg_data.bits_per_byte(14.0, 13) == pytest.approx(14 / math.log(2) / 13)


# --- tokenizer ----------------------------------------------------------------------------------------------------

def test_bpe_tokenizer_is_lossless_and_merges_runs_from_the_left() -> None:
    m = _load(MINI / "model.py", "pg_model_tok")
    assert m.merge_pair(np.array([5, 5, 5, 5, 5]), 5, 5, 9).tolist() == [9, 9, 5]
    assert m.merge_pair(np.array([1, 5, 6, 5, 6, 6]), 5, 6, 9).tolist() == [1, 9, 9, 6]
    text = "To be, or not to be: that is the question.\n" * 20 + "caf\u00e9 \u2014 na\u00efve"
    ids = np.frombuffer(text.encode(), np.uint8).astype(np.int64) + m.N_SPECIAL
    tok = m.Tokenizer(m.learn_merges(ids, 40))
    enc = tok.encode(text)
    assert 30 <= len(tok.merges) <= 40 and len(enc) < len(text) / 3
    assert b"".join(tok.pieces[i] for i in enc) == text.encode() and tok.decode(enc) == text


# --- the full recipe on CPU, on small shards in the real format -------------------------------------------------

def test_full_recipe_trains_and_is_scored_on_small_shards(runner: Runner, tmp_path: Path) -> None:
    tiny = [("num_layers = 9", "num_layers = 1"), ("model_dim = 512", "model_dim = 32"),
            ("num_heads = 8", "num_heads = 2"), ("num_kv_heads = 4", "num_kv_heads = 1"),
            ("iterations = 20000", "iterations = 2"), ("train_batch_tokens = 524288", "train_batch_tokens = 256"),
            ("micro_batch_tokens = 65536", "micro_batch_tokens = 128"), ("train_seq_len = 1024", "train_seq_len = 64"),
            ("eval_seq_len = 1024", "eval_seq_len = 64"), ("eval_stride = 1024", "eval_stride = 32")]
    recipe = _recipe(tmp_path, "full_tiny", src=FULL, train_py=tiny)
    r = Runner(tmp_path / "full")
    rng = np.random.default_rng(0)
    pg_data.write_shard(r.pub / "fineweb_train_000000.bin", rng.integers(0, 1024, 3000))
    (r.priv / "val").mkdir()
    val = np.concatenate([[1], rng.integers(3, 1024, 499)])
    pg_data.write_shard(r.priv / "val" / "fineweb_val_000000.bin", val)
    pieces = [("<unk>", "unknown"), ("<s>", "control"), ("</s>", "control")]
    pieces += [(("\u2581" if i % 3 == 0 else "") + "ab"[: 1 + i % 2], "normal") for i in range(3, 1024)]
    base, space, boundary = pg_data.piece_byte_luts(pieces)
    np.savez(r.priv / "byte_luts.npz", base=base, space=space, boundary=boundary)
    out = r.root / "out"
    r.phase("train", recipe, out, variant="full")
    metrics = r.phase("evaluate", recipe, out, variant="full").result
    assert metrics["causal"] and metrics["normalized"] and metrics["exact_bytes"], metrics
    assert metrics["val_tokens"] == 499
    assert metrics["val_bytes"] == int(pg_data.target_bytes(val, (base, space, boundary)).sum())
    assert 5.0 < metrics["val_bpb"] < 20.0


def test_full_stage_without_data_says_how_to_get_it(tmp_path: Path) -> None:
    ev = _load(HERE / "evaluator.py", "pg_evaluator_full")
    ctx = types.SimpleNamespace(variant="full", public_dir=tmp_path, private_dir=tmp_path,
                                options={"data_path": str(tmp_path / "none"), "tokenizer_path": ""})
    with pytest.raises(FileNotFoundError, match="cached_challenge_fineweb.py --variant sp1024"):
        ev.stage(ctx)


# --- specialists and surfaces -------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["mini", "full"])
def test_catalog_techniques_apply_once_inside_their_surfaces(variant: str) -> None:
    recipe = HERE / f"recipe_{variant}"
    files = {p.name: p.read_text() for p in recipe.glob("*.py")}
    specs = task._specialists(variant)
    assert {s.name for s in specs} >= {"arch", "opt", "quant", "reg", "loss", "eval", "curr"}
    for spec in specs:
        assert spec.catalog, spec.name
        for tech in spec.catalog:
            after = apply_edits(files, tech.edits)
            check_surface(files, after, spec.surface, spec.name)
            for e in tech.edits:
                compile(after[e.path], e.path, "exec")


def test_recipes_share_model_code_and_forbid_validation_paths() -> None:
    assert (MINI / "model.py").read_text() == (FULL / "model.py").read_text()
    files = {"train.py": (MINI / "train.py").read_text()}
    sneaky = dict(files, **{"train.py": files["train.py"] + '\nVAL = "../private/val.jsonl"\n'})
    with pytest.raises(SurfaceViolation):
        check_forbidden(files, sneaky, task.FORBIDDEN)
