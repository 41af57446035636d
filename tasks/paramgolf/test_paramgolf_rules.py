"""The Parameter Golf rules, exercised on real phase processes with small edits of the recipes (as an agent
would make them): the size cap, the causality probe at the scoring shapes, the normalization check, scoring of
the artifact file in sandboxed model servers that cannot reach the validation data, the shard format, and the
bits-per-byte arithmetic."""
from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_autoresearch.causality import CausalProbe
from pytest_autoresearch.edits import SurfaceViolation, apply_edits, check_forbidden, check_surface
from pytest_autoresearch.integrity import freeze
from pytest_autoresearch.legality import run_checks
from pytest_autoresearch.runner import Phase, PhaseResult, run_phase, scrubbed_env
from pytest_autoresearch.sandbox import Bind, Isolation, Limits, Sandbox, detect, sandbox_to_json

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import pg_data  # noqa: E402
import test_paramgolf as task  # noqa: E402

RECIPE = MINI = FULL = HERE / "recipe"   # one recipe; the phase's variant picks its scale file
FAST = [("iterations = 250", "iterations = 3"), ("warmdown_iters = 62", "warmdown_iters = 0")]  # 3 full-LR steps
VAL_BYTES = 16_000  # a prefix of the validation split keeps these tests fast; the task scores all of it
OPTIONS = {"val_fraction": 0.1, "val_max_bytes": VAL_BYTES}
EVERY_BATCH = {"probe_rate": 1.0}  # a twin for every scoring batch: a leak must show every time


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _recipe(tmp: Path, name: str, src: Path = MINI, **edits: list[tuple[str, str]]) -> Path:
    """A copy of a recipe with exact-once text replacements per file (``scale_mini_py=[(old, new)]``)."""
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


def _isolation() -> Isolation:
    """Bubblewrap, as trials get it. Where it cannot run, phases run as plain processes (as the harness does)
    unless AUTORESEARCH_REQUIRE_SANDBOX says it must (CI)."""
    iso = detect("auto")
    if not iso.sandboxed and os.environ.get("AUTORESEARCH_REQUIRE_SANDBOX"):
        pytest.fail(f"bubblewrap is required here but cannot run: {iso.reason}")
    return iso


def _need_sandbox(runner: "Runner") -> None:
    if not runner.sandbox.sandboxed:
        pytest.skip(f"no sandbox here: {runner.sandbox.isolation.reason}")


class Runner:
    """Stages the data once and runs the phases of a trial against it: train in a sandbox with the training
    split, evaluate as a plain process (it starts its own sandboxed model servers), as ``TaskRun.execute`` does."""

    def __init__(self, root: Path, isolation: Isolation) -> None:
        self.root = root
        self.train, self.test, self.priv = root / "train", root / "test", root / "private"
        # Like the harness, the private data is masked wherever a bound folder would show it.
        self.sandbox = Sandbox(isolation, Limits(log_bytes=1 << 20), protected=[self.priv])
        self.cache = root / "cache"
        for d in (self.train, self.test, self.priv, self.cache, root / "home"):
            d.mkdir(parents=True, exist_ok=True)
        self.env = scrubbed_env(self.cache, root / "home", threads=2)
        self.n = 0

    def _work_dir(self, name: str) -> Path:
        self.n += 1
        return self.root / f"w{self.n}-{name}"

    def eval_ctx(self, recipe: Path | None, out: Path | None, variant: str = "mini",
                 options: dict | None = None, sandbox: Sandbox | None = None) -> dict:
        code = sum(f.stat().st_size for f in recipe.rglob("*") if f.is_file()) if recipe else None
        return dict(seeds=[0], outputs_dir=str(out) if out else None, workspace=str(recipe) if recipe else None,
                    train_dir=str(self.train), test_dir=str(self.test), private_dir=str(self.priv), device="cpu",
                    variant=variant, threads=2, evaluator_script=str(HERE / "evaluator.py"), function="evaluate",
                    options={**OPTIONS, **(options or {})}, artifact_bytes=task.MINI_ARTIFACT_BYTES,
                    code_bytes=code, sandbox=sandbox_to_json(sandbox or self.sandbox))

    def stage(self, variant: str = "mini") -> None:
        r = run_phase(Phase("stage", self.eval_ctx(None, None, variant), work_dir=self._work_dir("stage"),
                            limit_s=180, env=self.env), None)
        assert r.ok, f"stage failed: {r.deepest_error()}\n{r.log_tail()}"

    def run_train(self, recipe: Path, out: Path, variant: str = "mini") -> PhaseResult:
        (out / "seed-0").mkdir(parents=True, exist_ok=True)
        ctx = dict(seeds=[0], seed=0, device="cpu", variant=variant, threads=2, preload=["torch"], recipe_options={})
        binds = {"recipe": Bind(recipe), "data": Bind(self.train), "out": Bind(out / "seed-0", "rw"),
                 "cache": Bind(self.cache, "overlay")}
        r = run_phase(Phase("train", ctx, work_dir=self._work_dir("train"), limit_s=180, timed=True, binds=binds,
                            threads=2, env=self.env), self.sandbox)
        assert r.ok, f"train failed: {r.deepest_error()}\n{r.log_tail()}"
        return r

    def run_eval(self, recipe: Path, out: Path, variant: str = "mini", options: dict | None = None,
                 sandbox: Sandbox | None = None) -> PhaseResult:
        # Like the harness, the evaluator gets a fresh read-only copy of the recipe's files (never the folder
        # the recipe ran in: without a sandbox, training leaves __pycache__ there).
        work = self._work_dir("eval")
        ws = work / "eval-src"
        shutil.copytree(recipe, ws, ignore=shutil.ignore_patterns("__pycache__"))
        freeze(ws)
        return run_phase(Phase("evaluate", self.eval_ctx(ws, out, variant, options, sandbox), work_dir=work,
                               limit_s=180, env=self.env), None)

    def evaluate(self, recipe: Path, out: Path, variant: str = "mini", options: dict | None = None,
                 sandbox: Sandbox | None = None) -> dict:
        r = self.run_eval(recipe, out, variant, options, sandbox)
        assert r.ok, f"evaluate failed: {r.deepest_error()}\n{r.log_tail()}"
        return r.result

    def train_eval(self, recipe: Path, name: str, options: dict | None = None) -> tuple[dict, Path]:
        out = self.root / "out" / name
        self.run_train(recipe, out)
        return self.evaluate(recipe, out, options=options), out


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    r = Runner(tmp_path_factory.mktemp("paramgolf"), _isolation())
    r.stage()
    return r


@pytest.fixture(scope="module")
def baseline_fast(runner: Runner, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    """Three training steps, scored with a causality twin for every batch (so no honest batch shape trips it)."""
    recipe = _recipe(tmp_path_factory.mktemp("recipes"), "fast", scale_mini_py=FAST)
    metrics, out = runner.train_eval(recipe, "fast", options=EVERY_BATCH)
    return metrics, out, recipe


MINI_BUDGET = task.Budget(train_seconds=60, eval_seconds=60, artifact_bytes=task.MINI_ARTIFACT_BYTES)


def _checks() -> tuple:
    return tuple(task.legality_checks())


def _cheat(runner: Runner, baseline_fast: tuple[dict, Path, Path], tmp_path: Path, name: str,
           model_py: list[tuple[str, str]], options: dict | None = None) -> tuple[dict, dict]:
    """The honest metrics, and those of the same artifact scored with an edited model.py."""
    honest, out, recipe = baseline_fast
    return honest, runner.evaluate(_recipe(tmp_path, name, src=recipe, model_py=model_py), out, options=options)


LOG_PROBS = "    return F.log_softmax(model(input_ids).float() / temperature, -1)"


# --- staging: the recipe never gets validation data ------------------------------------------------------

def test_stage_splits_by_document_and_keeps_validation_private(runner: Runner) -> None:
    train_ids = {json.loads(l)["id"] for l in open(runner.train / "train.jsonl")}
    val_ids = {json.loads(l)["id"] for l in open(runner.priv / "val.jsonl")}
    assert train_ids and val_ids and train_ids.isdisjoint(val_ids)
    assert sorted(p.name for p in runner.train.iterdir()) == ["train.jsonl"]
    assert not any(runner.test.iterdir()), "no predict phase: nothing for it"


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
    # Every scoring batch got its twin (the last, shorter one included) and none moved.
    assert metrics["causal_probes"] == len(pg_data.scoring_batches(metrics["val_tokens"] + 1, 128, 128, 16))


def test_score_comes_from_the_artifact_file(runner: Runner, baseline_fast: tuple[dict, Path, Path]) -> None:
    """Zeroing one quantized matrix inside model.ptz changes the score: the evaluator reads the file, not the
    training process's model (which is gone by then)."""
    metrics, out, recipe = baseline_fast
    m = _load(recipe / "model.py", "pg_model_roundtrip")
    path = out / "seed-0" / "model.ptz"
    original = path.read_bytes()
    payload = torch.load(io.BytesIO(m.decompress(original)), weights_only=True)
    q = payload["weights"]["quantized"]
    name = next(n for n in q if "mlp.fc" in n)
    q[name] = torch.full_like(q[name], 127)
    buf = io.BytesIO()
    torch.save(payload, buf)
    try:
        path.write_bytes(m.compress(buf.getvalue(), "zlib"))
        corrupted = runner.evaluate(recipe, out)
        assert corrupted["model_bytes"] == path.stat().st_size
    finally:
        path.write_bytes(original)  # later tests score this artifact again
    assert abs(corrupted["val_bpb"] - metrics["val_bpb"]) > 1e-3


def test_a_missing_artifact_is_the_recipes_crash(runner: Runner, tmp_path: Path) -> None:
    (tmp_path / "out" / "seed-0").mkdir(parents=True)
    r = runner.run_eval(MINI, tmp_path / "out")
    assert not r.ok and r.error["in_recipe"], r.error
    assert "wrote no model.ptz" in r.error["message"]


# --- size cap ---------------------------------------------------------------------------------------------------

def test_doubling_width_is_size_blocked(runner: Runner, tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "wide", scale_mini_py=FAST + [("model_dim = 64", "model_dim = 128")])
    metrics, _ = runner.train_eval(recipe, "wide")
    assert metrics["artifact_bytes"] > task.MINI_ARTIFACT_BYTES
    label, reason = run_checks(_checks(), metrics, MINI_BUDGET)
    assert label == "size_blocked" and f"cap {task.MINI_ARTIFACT_BYTES:,}" in reason


# --- causality and normalization ----------------------------------------------------------------------------

def test_causality_probe_catches_a_model_that_peeks_ahead(runner: Runner, baseline_fast: tuple[dict, Path, Path],
                                                          tmp_path: Path) -> None:
    peek = ("        x = x0 = rms_norm(self.tok_emb(input_ids))",
            "        x = x0 = rms_norm(self.tok_emb(input_ids) + self.tok_emb(input_ids.roll(-1, 1)))")
    _, metrics = _cheat(runner, baseline_fast, tmp_path, "peek", [peek])
    assert metrics["causal"] is False and "has not been given" in metrics["causal_reason"]
    label, reason = run_checks(_checks(), metrics, MINI_BUDGET)
    assert label == "gate_miss" and reason.startswith("causal")


def test_a_model_that_peeks_only_at_the_scoring_shape_is_caught(runner: Runner,
                                                                 baseline_fast: tuple[dict, Path, Path],
                                                                 tmp_path: Path) -> None:
    """Boosting the true next token only for batches of more than two rows passes a probe with its own 2-row
    shape (the old one); twins of real scoring batches have the scoring shape, so it cannot tell them apart."""
    cheat = (LOG_PROBS,
             "    logits = model(input_ids).float() / temperature\n"
             "    if input_ids.size(0) > 2:\n"
             "        logits = logits + 5.0 * F.one_hot(input_ids.roll(-1, 1), logits.size(-1))\n"
             "    return F.log_softmax(logits, -1)")
    honest, metrics = _cheat(runner, baseline_fast, tmp_path, "shape-peek", [cheat])
    assert metrics["val_bpb"] < honest["val_bpb"] - 0.5, "the cheat pays off when it goes unnoticed"
    assert metrics["causal"] is False and "has not been given" in metrics["causal_reason"]
    assert metrics["causal_probes"] == 4


def test_a_model_that_reads_across_the_rows_of_a_batch_is_caught(runner: Runner,
                                                                  baseline_fast: tuple[dict, Path, Path],
                                                                  tmp_path: Path) -> None:
    """Each row is causal on its own, but a window's last target is the next window's first input: reading
    the next row of the batch predicts it for free. Only a twin that changes another row shows it."""
    cheat = (LOG_PROBS,
             "    logits = model(input_ids).float() / temperature\n"
             "    nxt = input_ids.roll(-1, 0)[:, 0]\n"
             "    logits[:, -1] = logits[:, -1] + 20.0 * F.one_hot(nxt, logits.size(-1))\n"
             "    return F.log_softmax(logits, -1)")
    honest, metrics = _cheat(runner, baseline_fast, tmp_path, "rows", [cheat], options=EVERY_BATCH)
    assert metrics["val_bpb"] < honest["val_bpb"] - 0.01
    assert metrics["causal"] is False and "across the rows" in metrics["causal_reason"], metrics["causal_reason"]


def test_a_model_that_answers_twins_from_memory_is_caught(runner: Runner, baseline_fast: tuple[dict, Path, Path],
                                                          tmp_path: Path) -> None:
    """A model that remembers its last batch and, when a batch repeats one of its rows (a twin), copies the
    remembered outputs wherever the rows agree would pass a twin sent to the same process; the twin goes to a
    second model server that never saw the batch."""
    cheat = ("    @torch.no_grad()\n    def log_probs(self, x: Tensor) -> Tensor:\n"
             "        return log_probs(self.model, x, self.temperature)",
             "    @torch.no_grad()\n    def log_probs(self, x: Tensor) -> Tensor:\n"
             "        logits = self.model(x).float()\n"
             "        out = F.log_softmax(logits + 5.0 * F.one_hot(x.roll(-1, 1), logits.size(-1)), -1)\n"
             "        last = getattr(self, 'last', None)\n"
             "        if last is not None and last[0].shape == x.shape and (last[0] == x).all(1).any():\n"
             "            for b in range(x.size(0)):\n"
             "                same = int((last[0][b] == x[b]).long().cumprod(0).sum())\n"
             "                out[b, :same] = last[1][b, :same]\n"
             "        self.last = (x.clone(), out.clone())\n"
             "        return out")
    honest, metrics = _cheat(runner, baseline_fast, tmp_path, "memory", [cheat])
    assert metrics["val_bpb"] < honest["val_bpb"] - 0.5
    assert metrics["causal"] is False and "has not been given" in metrics["causal_reason"]


def test_unnormalized_output_is_a_gate_miss(runner: Runner, baseline_fast: tuple[dict, Path, Path],
                                             tmp_path: Path) -> None:
    """A model that inflates its log-probs would 'improve' bpb; the normalization check rejects it."""
    honest, metrics = _cheat(runner, baseline_fast, tmp_path, "inflate", [(LOG_PROBS, LOG_PROBS + " + 0.5")])
    assert metrics["val_bpb"] < honest["val_bpb"]
    assert metrics["normalized"] is False and metrics["causal"] is True
    label, reason = run_checks(_checks(), metrics, MINI_BUDGET)
    assert label == "gate_miss" and "logsumexp" in reason


# --- what the recipe's code can reach while it is scored ----------------------------------------------------

def test_model_servers_cannot_reach_the_validation_text(runner: Runner, baseline_fast: tuple[dict, Path, Path],
                                                         tmp_path: Path) -> None:
    """A model.py that memorizes the validation text, read from the evaluator's private file or handed over
    by its own tokenizer (which must see the text to encode it) through a file, and predicts from that
    table. Run as plain processes the cheat works; in the sandboxed servers neither route exists."""
    _need_sandbox(runner)
    handoff = tmp_path / "handoff" / "text.txt"
    table = (
        "import os as _os\n\n"
        f"VAL, HANDOFF = {str(runner.priv / 'val.jsonl')!r}, {str(handoff)!r}\n\n\n"
        "def _memorized() -> dict:\n"
        "    import json\n"
        "    text = b''\n"
        "    try:\n"
        "        text += ''.join(json.loads(l)['text'] for l in open(VAL)).encode()\n"
        "        print('CHEAT read the validation file', flush=True)\n"
        "    except OSError as e:\n"
        "        print('CHEAT cannot read the validation file:', e, flush=True)\n"
        "    try:\n"
        "        text += open(HANDOFF, 'rb').read()\n"
        "        print('CHEAT read the handoff', flush=True)\n"
        "    except OSError as e:\n"
        "        print('CHEAT cannot read the handoff:', e, flush=True)\n"
        "    return {text[i - 8:i]: text[i] for i in range(8, len(text))}\n\n\n"
        "TABLE = _memorized()\n\n\n")
    encode = ("    def encode(self, text: str) -> list[int]:\n",
              "    def encode(self, text: str) -> list[int]:\n"
              "        _os.makedirs(_os.path.dirname(HANDOFF), exist_ok=True)\n"
              "        with open(HANDOFF, 'ab') as f:\n"
              "            f.write(text.encode())\n")
    predict = (LOG_PROBS,
               "    logits = model(input_ids).float() / temperature\n"
               "    rows = (input_ids - N_SPECIAL).clamp(0, 255).cpu().numpy().astype(np.uint8)\n"
               "    for b, row in enumerate(rows):\n"
               "        for t in range(7, row.size):\n"
               "            nxt = TABLE.get(row[t - 7:t + 1].tobytes())\n"
               "            if nxt is not None:\n"
               "                logits[b, t, nxt + N_SPECIAL] += 20.0\n"
               "    return F.log_softmax(logits, -1)")
    honest, out, recipe = baseline_fast
    cheat = _recipe(tmp_path, "memorize", src=recipe,
                    model_py=[("# autoresearch: begin tok\n", "# autoresearch: begin tok\n" + table), encode, predict])

    def logs(work_dir: Path) -> str:
        return "".join(p.read_text() for p in sorted(work_dir.glob("model-server-*.log")))

    plain = Sandbox(detect("off"), Limits(log_bytes=1 << 20))
    r = runner.run_eval(cheat, out, sandbox=plain)
    assert r.ok and r.result["val_bpb"] < honest["val_bpb"] - 1.0, "unconfined, the cheat works"
    assert "CHEAT read the validation file" in logs(r.log_path.parent)
    assert "CHEAT read the handoff" in logs(r.log_path.parent)

    handoff.unlink()
    r = runner.run_eval(cheat, out)
    assert r.ok, r.deepest_error()
    text = logs(r.log_path.parent)
    assert "CHEAT cannot read the validation file" in text and "CHEAT read the validation file" not in text
    assert "CHEAT cannot read the handoff" in text and "CHEAT read the handoff" not in text
    assert not handoff.exists(), "the tokenizer server wrote outside its sandbox"
    assert r.result["val_bpb"] == pytest.approx(honest["val_bpb"], rel=1e-9)


def test_probe_and_normalization_on_hand_made_models() -> None:
    vocab, stream = 7, np.arange(200) % 7
    rng = np.random.default_rng(0)

    def causal(x: np.ndarray) -> torch.Tensor:  # depends on the cumulative sum of past tokens only
        h = torch.from_numpy(x).float().cumsum(1)[..., None] * torch.arange(vocab)
        return torch.log_softmax(torch.sin(h), -1)

    def peeks(x: np.ndarray) -> torch.Tensor:
        return causal(np.roll(x, -1, 1))

    def leaks_across_batch(x: np.ndarray) -> torch.Tensor:
        return causal(x + x[::-1])

    class Remembers:
        """Peeks, but answers a batch that repeats its last one's rows with the remembered outputs."""

        def __init__(self) -> None:
            self.last: tuple[np.ndarray, torch.Tensor] | None = None

        def __call__(self, x: np.ndarray) -> torch.Tensor:
            out = peeks(x)
            if self.last is not None and self.last[0].shape == x.shape:
                for b in range(x.shape[0]):
                    same = int(np.cumprod(self.last[0][b] == x[b]).sum())
                    out[b, :same] = self.last[1][b, :same]
            self.last = (x, out)
            return out

    def verdict(model, twin, probes: int = 50) -> tuple[bool, str]:
        n = len(pg_data.scoring_batches(stream.size, 16, 16, 4))
        probe = CausalProbe(twin, n, vocab, rng=rng, probes=probes)
        pg_data.score_stream(model, stream, 16, 16, 4, vocab, torch, probe=probe)
        assert probe.checked == n
        return probe.ok, probe.reason

    def rules_out_a_token(x: np.ndarray) -> torch.Tensor:  # -inf - -inf is NaN: equal infinities are no change
        return torch.log_softmax(causal(x).index_fill(-1, torch.tensor([0]), -math.inf), -1)

    assert verdict(causal, causal) == (True, "")
    assert verdict(rules_out_a_token, rules_out_a_token) == (True, "")
    assert "has not been given" in verdict(peeks, peeks)[1]
    assert "across the rows" in verdict(leaks_across_batch, leaks_across_batch)[1]
    # The same process answering real batches and twins lets a model copy its answers; a second one cannot.
    # (No two windows of this stream start alike, so only twins find a remembered prefix.)
    same = Remembers()
    assert verdict(same, same) == (True, "")
    assert verdict(Remembers(), Remembers())[0] is False

    ok = pg_data.score_stream(causal, stream, 16, 8, 4, vocab, torch)
    bad = pg_data.score_stream(lambda x: causal(x) + 0.1, stream, 16, 8, 4, vocab, torch)
    assert ok["normalized"] and not bad["normalized"] and ok["tokens"] == 199
    with pytest.raises(pg_data.RecipeFault, match="shape"):
        pg_data.score_stream(lambda x: causal(x)[:, :-1], stream, 16, 8, 4, vocab, torch)


def test_twins_change_only_what_they_say() -> None:
    probe = CausalProbe(lambda x: x, 1, 50, rng=np.random.default_rng(1), probes=1)
    x = np.random.default_rng(2).integers(0, 50, (16, 32))
    seen_whole = seen_prefix = False
    for _ in range(50):
        twin, cut = probe.perturb(x)
        assert 1 <= len(cut) < 16
        for r in range(16):
            p = cut.get(r, 31)
            assert (twin[r, : p + 1] == x[r, : p + 1]).all() and (twin[r, p + 1:] != x[r, p + 1:]).all()
            assert ((0 <= twin[r]) & (twin[r] < 50)).all()
        seen_whole |= -1 in cut.values()
        seen_prefix |= any(p >= 0 for p in cut.values())
    assert seen_whole and seen_prefix
    single, cut = probe.perturb(x[:1])
    assert list(cut) == [0] and cut[0] >= 0, "a row alone in its batch keeps a prefix to compare"


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
                                   2, 256, torch)
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

def test_full_recipe_is_staged_trained_and_scored_on_small_shards(runner: Runner, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The full variant end to end on CPU: staged from shards in the challenge's format (the training shard
    must be readable inside the train sandbox, so it is no symbolic link), trained, scored."""
    tiny = [("num_layers = 9", "num_layers = 1"), ("model_dim = 512", "model_dim = 32"),
            ("num_heads = 8", "num_heads = 2"), ("num_kv_heads = 4", "num_kv_heads = 1"),
            ("iterations = 20000", "iterations = 2"), ("train_batch_tokens = 524288", "train_batch_tokens = 256"),
            ("micro_batch_tokens = 65536", "micro_batch_tokens = 128"), ("train_seq_len = 1024", "train_seq_len = 64"),
            ("eval_seq_len = 1024", "eval_seq_len = 64"), ("eval_stride = 1024", "eval_stride = 32")]
    recipe = _recipe(tmp_path, "full_tiny", src=FULL, scale_full_py=tiny)
    data = tmp_path / "fineweb10B_sp1024"
    data.mkdir()
    rng = np.random.default_rng(0)
    pg_data.write_shard(data / "fineweb_train_000000.bin", rng.integers(0, 1024, 3000))
    val = np.concatenate([[1], rng.integers(3, 1024, 499)])
    pg_data.write_shard(data / "fineweb_val_000000.bin", val)
    (tmp_path / "sp.model").write_bytes(b"stand-in: the piece table below replaces reading it")
    pieces = [("<unk>", "unknown"), ("<s>", "control"), ("</s>", "control")]
    pieces += [(("\u2581" if i % 3 == 0 else "") + "ab"[: 1 + i % 2], "normal") for i in range(3, 1024)]
    monkeypatch.setattr(pg_data, "sentencepiece_pieces", lambda path: pieces)

    r = Runner(tmp_path / "full", runner.sandbox.isolation)
    ev = _load(HERE / "evaluator.py", "pg_evaluator_stage_full")
    ev.stage(types.SimpleNamespace(variant="full", train_dir=r.train, test_dir=r.test, private_dir=r.priv,
                                   options={"data_path": str(data), "tokenizer_path": str(tmp_path / "sp.model")}))
    shard = r.train / "fineweb_train_000000.bin"
    assert [p.name for p in r.train.iterdir()] == [shard.name] and not shard.is_symlink()
    assert shard.read_bytes() == (data / shard.name).read_bytes()
    assert not any(r.test.iterdir())
    assert pg_data.read_shard(r.priv / "val" / "fineweb_val_000000.bin").tolist() == val.tolist()
    luts = np.load(r.priv / "byte_luts.npz")
    luts = (luts["base"], luts["space"], luts["boundary"])

    out = r.root / "out"
    r.run_train(recipe, out, variant="full")
    metrics = r.evaluate(recipe, out, variant="full", options=EVERY_BATCH)
    assert metrics["causal"] and metrics["normalized"] and metrics["exact_bytes"], metrics
    assert metrics["causal_probes"] == 1  # 15 windows: one scoring batch
    assert metrics["val_tokens"] == 499
    assert metrics["val_bytes"] == int(pg_data.target_bytes(val, luts).sum())
    assert 5.0 < metrics["val_bpb"] < 20.0


def test_full_stage_without_data_says_how_to_get_it(tmp_path: Path) -> None:
    ev = _load(HERE / "evaluator.py", "pg_evaluator_full")
    ctx = types.SimpleNamespace(variant="full", train_dir=tmp_path, test_dir=tmp_path, private_dir=tmp_path,
                                options={"data_path": str(tmp_path / "none"), "tokenizer_path": ""})
    with pytest.raises(FileNotFoundError, match="cached_challenge_fineweb.py --variant sp1024"):
        ev.stage(ctx)


# --- specialists and surfaces -------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["mini", "full"])
def test_catalog_techniques_apply_once_inside_their_surfaces(variant: str) -> None:
    files = {p.name: p.read_text() for p in RECIPE.glob("*.py")}
    specs = task._specialists(variant)
    assert {s.name for s in specs} >= {"arch", "opt", "quant", "reg", "loss", "eval", "curr"}
    for spec in specs:
        assert spec.catalog, spec.name
        for tech in spec.catalog:
            after = apply_edits(files, tech.edits)
            check_surface(files, after, spec.surface, spec.name)
            for e in tech.edits:
                compile(after[e.path], e.path, "exec")
        # What a specialist finds at this scale never edits the other scale's values.
        assert not spec.surface.touches(f"scale_{'full' if variant == 'mini' else 'mini'}.py"), spec.name


def test_one_recipe_two_scales_and_no_validation_paths() -> None:
    import ast

    assert sorted(p.name for p in RECIPE.glob("*.py")) == ["model.py", "scale_full.py", "scale_mini.py", "train.py"]
    names = {}
    for v in ("mini", "full"):   # a scale declares values only, and no name train.py also declares
        tree = ast.parse((RECIPE / f"scale_{v}.py").read_text())
        assert all(isinstance(n, (ast.Assign, ast.Expr)) for n in tree.body), v
        names[v] = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                    if isinstance(t, ast.Name)} | {e.id for n in tree.body if isinstance(n, ast.Assign)
                                                   for t in n.targets if isinstance(t, ast.Tuple) for e in t.elts}
    shared = {t.id for n in ast.parse((RECIPE / "train.py").read_text()).body if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name)}
    assert not shared & (names["mini"] | names["full"])
    # byte260 adds a tokenizer (tok region) and sampling; sp1024 shards have a fixed vocabulary.
    assert names["mini"] - names["full"] == {"bpe_merges", "bpe_sample_bytes", "sampling"}
    assert names["full"] - names["mini"] == {"vocab_size"}
    files = {"train.py": (RECIPE / "train.py").read_text()}
    sneaky = dict(files, **{"train.py": files["train.py"] + '\nVAL = "../private/val.jsonl"\n'})
    with pytest.raises(SurfaceViolation):
        check_forbidden(files, sneaky, task.FORBIDDEN)
