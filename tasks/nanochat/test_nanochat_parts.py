"""NanoChat task parts: mini-CORE generators, the model, the shard loaders, the catalog, and both variants run
through the real trial phases (stage -> train -> evaluate) at toy size."""
from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
import random
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import nanochat_core  # noqa: E402
import nanochat_minicore as mc  # noqa: E402
from test_nanochat import COMMON_CATALOG, FORBIDDEN, MINI_OPTIONS, RECIPE, make_specialists  # noqa: E402

from pytest_autoresearch.edits import apply_edits, check_compiles, check_forbidden, check_surface  # noqa: E402


def load(path: Path, name: str, source: str | None = None) -> ModuleType:
    """Import a recipe/evaluator file under a private name (recipe folders are not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    if source is None:
        spec.loader.exec_module(mod)
    else:
        exec(compile(source, str(path), "exec"), mod.__dict__)
    return mod


gpt = load(RECIPE / "gpt.py", "_nc_test_gpt")
evaluator = load(HERE / "evaluator.py", "_nc_test_evaluator")
sys.path.insert(0, str(HERE.parent / "corpus"))
import corpus  # noqa: E402

HELDOUT = [d["text"] for d in corpus.split_documents(corpus.load_documents(), 0.1)[1]]


# -- mini-CORE ------------------------------------------------------------------------------------------------

def test_minicore_bundle_has_documented_tasks_and_random_baselines(tmp_path: Path) -> None:
    items = mc.build_items(HELDOUT, seed=1, n_items=30)
    mc.write_bundle(tmp_path, items)
    tasks = {t.label: t for t in nanochat_core.load_tasks(tmp_path)}
    assert {k: (t.task_type, t.num_fewshot, t.random_baseline) for k, t in tasks.items()} == {
        "dyck": ("language_modeling", 3, 0.0), "repeat_copy": ("language_modeling", 3, 0.0),
        "operators": ("language_modeling", 3, 0.0), "lastword": ("language_modeling", 0, 0.0),
        "continuation": ("multiple_choice", 0, 25.0), "context_schema": ("schema", 0, 50.0),
        "word_order": ("multiple_choice", 0, 50.0)}
    for label, t in tasks.items():
        assert len(nanochat_core.load_items(tmp_path, t)) == len(items[label]) > 0


def test_minicore_items_are_deterministic_per_seed() -> None:
    a, b, c = (mc.build_items(HELDOUT, seed=s, n_items=25) for s in (3, 3, 4))
    assert a == b
    assert all(a[t] != c[t] for t in mc.TASKS)


def test_procedural_items_have_correct_answers() -> None:
    for it in mc.procedural_items("dyck", 200, seed=5):
        stack = []
        for ch in (it["context"][len("dyck: "):] + " " + it["continuation"]).split():
            if ch in mc.BRACKETS:
                stack.append(ch)
            else:
                assert stack and mc.BRACKETS[stack.pop()] == ch, it
        assert not stack, it
        assert len(it["continuation"].split()) >= 1
    for it in mc.procedural_items("operators", 200, seed=5):
        m = re.fullmatch(r"(max|min)\((\d+), (\d+)\) =|(\d+) \+ (\d+) =", it["context"])
        assert m, it
        want = (max if m[1] == "max" else min)(int(m[2]), int(m[3])) if m[1] else int(m[4]) + int(m[5])
        assert it["continuation"] == str(want)
    for it in mc.procedural_items("repeat_copy", 200, seed=5):
        phrase, n = re.fullmatch(r'say "(.+)" (\d) times:', it["context"]).groups()
        assert it["continuation"] == " ".join([phrase] * int(n))


def test_text_items_point_at_the_true_continuation() -> None:
    flat = " ".join(" ".join(t.split()) for t in HELDOUT)
    items = mc.build_items(HELDOUT, seed=9, n_items=40)
    for it in items["continuation"]:
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
        assert it["query"] + " " + it["choices"][it["gold"]] in flat
    for it in items["word_order"]:
        assert sorted(it["choices"][0].split()) == sorted(it["choices"][1].split())
        assert it["query"] + " " + it["choices"][it["gold"]] in flat
    for it in items["context_schema"]:
        assert it["context_options"][it["gold"]] + " " + it["continuation"] in flat
    for it in items["lastword"]:
        assert it["continuation"].lower() in it["context"].lower()
        assert it["context"] + " " + it["continuation"] in flat
    golds = [it["gold"] for it in items["continuation"]]
    assert len(set(golds)) > 1  # the answer position varies


def test_training_blocks_never_contain_eval_items() -> None:
    items = {t: mc.procedural_items(t, 300, seed=11) for t in mc.PROCEDURAL}
    keys = mc.eval_keys(items)
    blocks = mc.procedural_training_texts(600, seed=12, exclude=keys)
    examples = {ex for b in blocks for ex in b["text"].split("\n\n")}
    assert examples and not (examples & keys)
    assert {b["task"] for b in blocks} == set(mc.PROCEDURAL)
    # Blocks render like few-shot prompts: "context continuation" examples separated by a blank line.
    fmt = re.compile(r'dyck: [][(){}<> ]+|say "[a-z ]+" \d times: [a-z ]+|(max|min)\(\d+, \d+\) = \d+|\d+ \+ \d+ = \d+')
    assert all(fmt.fullmatch(ex) for ex in examples), [ex for ex in examples if not fmt.fullmatch(ex)][:3]


# -- model ----------------------------------------------------------------------------------------------------

def test_d12_config_and_parameter_count() -> None:
    cfg = gpt.config_for_depth(12, vocab_size=50304, sequence_len=2048)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_embd // cfg.n_head) == (12, 768, 6, 128)
    with torch.device("meta"):
        model = gpt.GPT(cfg)
    n = sum(p.numel() for p in model.parameters())
    blocks = 12 * (4 * 768 * 768 + 2 * 4 * 768 * 768)  # q, k, v, proj + MLP in/out, no biases
    assert n == blocks + 2 * 50304 * 768 == 162_201_600  # untied embedding and lm_head
    assert all(p.ndim == 2 for p in model.transformer.h.parameters())


def test_forward_shapes_loss_and_checkpoint_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = gpt.config_for_depth(2, vocab_size=320, sequence_len=32)
    assert (cfg.n_embd, cfg.n_head) == (128, 1)
    model = gpt.GPT(cfg)
    model.init_weights()
    for p in model.lm_head.parameters():
        torch.nn.init.normal_(p, std=0.02)  # zero-initialized head would make every logit equal
    idx = torch.randint(0, 256, (3, 32))
    logits = model(idx)
    assert logits.shape == (3, 32, 320) and logits.abs().max() <= gpt.LOGIT_SOFTCAP
    loss = model(idx, idx)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.transformer.h[0].attn.c_q.weight.grad is not None
    gpt.save_checkpoint(tmp_path / "model.pt", model, {"tokenizer": "bytes"})
    again, meta = gpt.load_model(tmp_path / "model.pt")
    assert meta == {"tokenizer": "bytes"}
    with torch.no_grad():
        assert torch.allclose(again(idx), model(idx), atol=1e-5)
    opts = gpt.setup_optimizers(model, embedding_lr=0.2, unembedding_lr=0.004, matrix_lr=0.02, scalar_lr=0.02,
                                weight_decay=0.0, adam_betas=(0.8, 0.95), muon_momentum=0.9)
    before = model.transformer.h[0].mlp.c_proj.weight.detach().clone()  # zero-init, nonzero grad
    for o in opts:
        o.step()
    assert not torch.equal(before, model.transformer.h[0].mlp.c_proj.weight)


def test_muon_update_is_orthogonalized() -> None:
    g = torch.randn(64, 256)
    u = gpt.orthogonalize(g, 5)
    sv = torch.linalg.svdvals(u)
    assert sv.min() > 0.5 and sv.max() < 1.5  # Newton-Schulz lands near 1 (roughly U(0.5, 1.5))


# -- scoring through a served model: answers checked, causality probed at the scoring shapes --------------------

class LocalClient:
    """A ModelClient stand-in that serves an object in-process (the evaluator's checks under test, not the
    sandbox): numpy arrays in, torch tensors to the object, numpy back, as serve.py converts them."""

    def __init__(self, obj: object, attrs: tuple[str, ...] = ("vocab_size", "max_seq_len")) -> None:
        self.obj, self.attrs = obj, {a: getattr(obj, a) for a in attrs}

    def call(self, method: str, *args: object) -> object:
        out = getattr(self.obj, method)(*[torch.from_numpy(a.copy()) if isinstance(a, np.ndarray) else a
                                          for a in args])
        return out.numpy() if isinstance(out, torch.Tensor) else out


class RuleModel:
    """Log-probabilities from a rule on the input ids: ``logits(idx) -> (B, T, V)``."""

    vocab_size, max_seq_len = 320, 512

    def __init__(self, logits: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.logits = logits

    def log_probs(self, idx: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.logits(idx)[rows, cols], -1)


def own_token(idx: torch.Tensor) -> torch.Tensor:
    return 3.0 * torch.nn.functional.one_hot(idx, 320).float()


def served(obj: object, probe_rate: float = 0.3, min_probes: int = 3) -> "evaluator.ServedLM":
    return evaluator.ServedLM(LocalClient(obj), probe_rate=probe_rate, min_probes=min_probes)


def byte_docs(n: int) -> list[tuple[list[int], int]]:
    return [(list(t.encode()[:300]), len(t.encode()[:300])) for t in HELDOUT[:n]]


def bpb_of(lm: "evaluator.ServedLM", seq_len: int, n_docs: int = 6) -> float:
    """Held-out bits per byte through ``lm`` (windows of ``seq_len``, batches of up to 16 rows), probes finished."""
    bpb = evaluator.bits_per_byte(lm, iter(byte_docs(n_docs)), 256, seq_len, lm.vocab_size)
    lm.finish()
    return bpb


def test_probe_catches_a_model_that_peeks_across_the_rows_of_a_batch() -> None:
    def peek_rows(idx: torch.Tensor) -> torch.Tensor:
        # Causal within each row, but every row also sees the other rows' last tokens.
        last = own_token(idx[:, -1:])
        others = (last.sum(0, keepdim=True) - last) / max(idx.size(0) - 1, 1)
        return own_token(idx) + others
    lm = served(RuleModel(peek_rows))
    bpb_of(lm, seq_len=64)
    assert lm.probes >= 3 and not lm.causal and lm.leak > 0.01
    honest = served(RuleModel(own_token))
    bpb_of(honest, seq_len=64)
    assert honest.probes >= 3 and honest.causal and honest.leak == 0.0


def test_probe_at_the_scoring_shape_catches_a_model_causal_only_at_small_shapes() -> None:
    def peek_when_long(idx: torch.Tensor) -> torch.Tensor:
        out = own_token(idx)
        if idx.size(1) > 64:  # honest at the old probe's 64-token shape, reads the next token beyond it
            out[:, :-1] += 5.0 * torch.nn.functional.one_hot(idx[:, 1:], 320).float()
        return out
    small = served(RuleModel(peek_when_long), probe_rate=1.0)
    rows, cols = (t.flatten() for t in torch.meshgrid(torch.arange(2), torch.arange(64), indexing="ij"))
    small(torch.randint(0, 256, (2, 64)), rows, cols)
    assert small.probes == 1 and small.causal  # a fixed small probe would pass it
    lm = served(RuleModel(peek_when_long))
    bpb = bpb_of(lm, seq_len=128)
    assert lm.probes >= 3 and not lm.causal and lm.leak > 0.1
    assert bpb < 0.5 * bpb_of(served(RuleModel(own_token)), seq_len=128)  # what peeking would have bought


def test_the_real_model_served_scores_as_in_process_and_passes_every_probe(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = gpt.GPT(gpt.config_for_depth(2, 320, 64))
    model.init_weights()
    for block in model.transformer.h:  # the zero-init projections hide attention entirely
        torch.nn.init.normal_(block.attn.c_proj.weight, std=0.1)
    torch.nn.init.normal_(model.lm_head.weight, std=0.1)
    gpt.save_checkpoint(tmp_path / "model.pt", model, {"tokenizer": "bytes"})
    lm = served(gpt.serve_model(str(tmp_path / "model.pt")), probe_rate=1.0)
    items = {t: v[:6] for t, v in mc.build_items(HELDOUT, seed=1, n_items=6).items()}
    bundle = mc.write_bundle(tmp_path / "minicore", items)
    tok = load(RECIPE / "tokenizer.py", "_nc_test_tokenizer").ByteTokenizer()
    got = nanochat_core.evaluate_core(lm, tok, bundle, max_seq_len=64, batch_tokens=512)
    want = nanochat_core.evaluate_core(nanochat_core.from_logits(model.eval()), tok, bundle, max_seq_len=64,
                                       batch_tokens=512)
    assert got == want
    bpb = bpb_of(lm, seq_len=64)
    # The same windows scored with the loss the model computes about itself (what the evaluator used to trust).
    nats, nbytes = 0.0, 0
    for ids, n in byte_docs(6):
        seq, nbytes = [256] + ids, nbytes + n
        for s in range(0, len(seq) - 1, 64):
            w = torch.tensor([seq[s:s + 65]])
            with torch.no_grad():
                nats += float(model(w[:, :-1], w[:, 1:], loss_reduction="sum"))
    assert bpb == pytest.approx(nats / math.log(2) / nbytes, rel=1e-5)
    assert lm.probes > 5 and lm.causal and lm.leak <= evaluator.LEAK_TOL and lm.normalized


def test_a_non_causal_attention_edit_is_caught_through_the_served_model(tmp_path: Path) -> None:
    src = (RECIPE / "gpt.py").read_text()
    leaky = load(RECIPE / "gpt.py", "_nc_test_leaky", src.replace("is_causal=True", "is_causal=False"))
    torch.manual_seed(0)
    model = leaky.GPT(leaky.config_for_depth(2, 320, 64))
    model.init_weights()
    for block in model.transformer.h:
        torch.nn.init.normal_(block.attn.c_proj.weight, std=0.1)
    torch.nn.init.normal_(model.lm_head.weight, std=0.1)
    leaky.save_checkpoint(tmp_path / "model.pt", model, {"tokenizer": "bytes"})
    lm = served(leaky.serve_model(str(tmp_path / "model.pt")), min_probes=1)
    bpb_of(lm, seq_len=64, n_docs=2)
    assert not lm.causal and lm.leak > evaluator.LEAK_TOL


def test_probes_through_a_real_model_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe's own serve_model behind the harness' model server (sandboxed where bubblewrap runs): an honest
    checkpoint passes, the same weights under a non-causal attention edit are caught."""
    from pytest_autoresearch.runtime import EvalContext
    from pytest_autoresearch.sandbox import Limits, Sandbox, detect, sandbox_to_json

    torch.manual_seed(0)
    model = gpt.GPT(gpt.config_for_depth(2, 320, 64))
    model.init_weights()
    for block in model.transformer.h:
        torch.nn.init.normal_(block.attn.c_proj.weight, std=0.1)
    torch.nn.init.normal_(model.lm_head.weight, std=0.1)
    (tmp_path / "out" / "seed-0").mkdir(parents=True)
    gpt.save_checkpoint(tmp_path / "out" / "seed-0" / "model.pt", model, {"tokenizer": "bytes"})
    honest, leaky = tmp_path / "honest", tmp_path / "leaky"
    shutil.copytree(RECIPE, honest)
    shutil.copytree(RECIPE, leaky)
    (leaky / "gpt.py").write_text((honest / "gpt.py").read_text().replace("is_causal=True", "is_causal=False"))
    monkeypatch.chdir(tmp_path)
    sandbox = sandbox_to_json(Sandbox(detect("auto"), Limits(), protected=[HERE]))
    for workspace, causal in ((honest, True), (leaky, False)):
        ctx = EvalContext(outputs_dir=tmp_path / "out", seeds=(0,), workspace=workspace, train_dir=tmp_path,
                          test_dir=tmp_path, private_dir=tmp_path / "priv", device="cpu", variant="mini", threads=1,
                          sandbox=sandbox)
        with ctx.model_server(0, module="gpt.py", factory="serve_model", artifact="model.pt",
                              attrs=("vocab_size", "max_seq_len", "tokenizer"), methods=("log_probs",)) as server:
            lm = evaluator.ServedLM(server, probe_rate=0.5, min_probes=2)
            assert (lm.vocab_size, lm.max_seq_len, server.attrs["tokenizer"]) == (320, 64, "bytes")
            bpb_of(lm, seq_len=64, n_docs=3)
        assert lm.causal is causal and lm.normalized and lm.probes >= 2, (workspace.name, lm.leak)


def test_served_answers_are_checked() -> None:
    unnormalized = RuleModel(own_token)
    unnormalized.log_probs = lambda idx, rows, cols: own_token(idx)[rows, cols]  # logits, not log-probabilities
    lm = served(unnormalized, probe_rate=0.0)
    bpb_of(lm, seq_len=32, n_docs=1)
    assert not lm.normalized and lm.norm_error > 1.0
    short = RuleModel(own_token)
    short.log_probs = lambda idx, rows, cols: torch.zeros(len(rows), 10)
    with pytest.raises(evaluator.RecipeFault, match="shape"):
        bpb_of(served(short), seq_len=32, n_docs=1)
    with pytest.raises(evaluator.RecipeFault, match="max_seq_len"):
        evaluator.ServedLM(SimpleNamespace(attrs={"vocab_size": 320, "max_seq_len": "64"}), 0.1, 1)

    class Tok:
        name, bos_id = "bytes", 256

        def encode(self, text: str) -> list[int]:
            return [400]
    tok = evaluator.RemoteTokenizer(LocalClient(Tok(), ("name", "bos_id")), vocab_size=320)
    with pytest.raises(evaluator.RecipeFault, match="ids below 320"):
        tok.encode("a")
    assert evaluator.RecipeFault.recipe_fault is True  # the harness labels it crash, not evaluator_error


def test_tokenizer_factories_by_checkpoint_name() -> None:
    assert evaluator._tokenizer_factory({"tokenizer": "bytes"}) == "serve_bytes"
    with pytest.raises(evaluator.RecipeFault):
        evaluator._tokenizer_factory({"tokenizer": "../bytes"})
    assert evaluator._tokenizer_factory({"tokenizer": "gpt2"}) == "serve_gpt2"
    assert "gpt2" in evaluator.NEEDS_STAGED_FILES  # its server is shown the train folder's tiktoken/ (read-only)


def test_model_server_cannot_read_heldout_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe's code, started the way evaluate() starts it, sees its checkout and model.pt, nothing else."""
    from pytest_autoresearch.runtime import EvalContext
    from pytest_autoresearch.sandbox import Isolation, Limits, Sandbox, detect, sandbox_to_json

    iso = detect("auto")
    if not iso.sandboxed:
        if os.environ.get("AUTORESEARCH_REQUIRE_SANDBOX"):
            pytest.fail(f"bubblewrap is required here but cannot run: {iso.reason}")
        pytest.skip(f"no sandbox here: {iso.reason}")
    dirs = {d: tmp_path / d for d in ("train", "test", "priv", "out/seed-0", "wd")}
    for d in dirs.values():
        d.mkdir(parents=True)
    secret = {"priv": dirs["priv"] / "heldout.jsonl", "train": dirs["train"] / "train_docs.jsonl"}
    for f in secret.values():
        f.write_text('{"id": "x", "text": "held out"}\n')
    (dirs["out/seed-0"] / "model.pt").write_bytes(b"weights")
    ws = tmp_path / "ws"
    shutil.copytree(RECIPE, ws)
    targets = [str(p) for p in (*secret.values(), HERE / "evaluator.py", HERE.parent / "corpus" / "english.jsonl.gz")]
    (ws / "spy.py").write_text(f"""
import os
from pathlib import Path

TARGETS = {targets!r}


class Spy:
    def __init__(self, artifact, device):
        self.readable = []
        for p in TARGETS:
            try:
                Path(p).read_bytes()
                self.readable.append(p)
            except OSError:
                pass
        self.artifact = Path(artifact).read_bytes().decode()
        try:
            Path(artifact).write_bytes(b"changed")
            self.artifact_writable = True
        except OSError:
            self.artifact_writable = False
        self.root = sorted(os.listdir("/"))


def make(artifact, device="cpu"):
    return Spy(artifact, device)
""")
    monkeypatch.chdir(dirs["wd"])  # model servers keep their logs in the evaluator's working folder

    def spy_report(isolation: object) -> dict:
        ctx = EvalContext(outputs_dir=tmp_path / "out", seeds=(0,), workspace=ws, train_dir=dirs["train"],
                          test_dir=dirs["test"], private_dir=dirs["priv"], device="cpu", variant="mini", threads=1,
                          sandbox=sandbox_to_json(Sandbox(isolation, Limits(), protected=[HERE])))
        with ctx.model_server(0, module="spy.py", factory="make", artifact="model.pt",
                              attrs=("readable", "artifact", "artifact_writable", "root")) as spy:
            return dict(spy.attrs)

    seen = spy_report(iso)
    assert seen["readable"] == [] and all(Path(t).exists() for t in targets)
    assert seen["artifact"] == "weights" and seen["artifact_writable"] is False
    assert {"recipe", "artifact"} <= set(seen["root"]) and "data" not in seen["root"]
    assert (dirs["out/seed-0"] / "model.pt").read_bytes() == b"weights"
    # The spy is no dud: in a plain process it reads every one of them.
    assert spy_report(Isolation("process", "test"))["readable"] == targets


def test_manual_attention_path_matches_sdpa() -> None:
    src = (RECIPE / "gpt.py").read_text()
    manual = load(RECIPE / "gpt.py", "_nc_test_manual",
                  src.replace('ATTENTION = "sdpa"', 'ATTENTION = "manual"'))
    torch.manual_seed(0)
    a = gpt.GPT(gpt.config_for_depth(2, 320, 32))
    a.init_weights()
    for block in a.transformer.h:
        torch.nn.init.normal_(block.attn.c_proj.weight, std=0.1)
    torch.nn.init.normal_(a.lm_head.weight, std=0.1)
    b = manual.GPT(manual.config_for_depth(2, 320, 32))
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        assert torch.allclose(a(idx), b(idx), atol=1e-4)


def test_one_recipe_whose_scales_declare_only_values() -> None:
    """Both variants run the same code: the scale files bind the same names, values only (no code), and no
    name is declared twice."""
    import ast

    assert sorted(p.name for p in RECIPE.glob("*.py")) == ["dataloader.py", "gpt.py", "scale_full.py",
                                                          "scale_mini.py", "tokenizer.py", "train.py"]
    names = {}
    for v in ("mini", "full"):
        tree = ast.parse((RECIPE / f"scale_{v}.py").read_text())
        assert all(isinstance(n, (ast.Assign, ast.Expr)) for n in tree.body), v
        names[v] = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets}
    assert names["mini"] == names["full"]
    shared = {t.id for n in ast.parse((RECIPE / "train.py").read_text()).body if isinstance(n, ast.Assign)
              for t in n.targets}
    assert not shared & names["mini"]


@pytest.mark.parametrize("variant", ["mini", "full"])
def test_catalog_techniques_apply_inside_their_surface(variant: str) -> None:
    files = {p.name: p.read_text() for p in RECIPE.glob("*.py")}
    specs = make_specialists(variant)
    assert [s.name for s in specs] == ["arch", "opt", "data", "sched", "sys"]
    for spec in specs:
        for tech in spec.catalog:
            after = apply_edits(files, tech.edits)
            check_surface(files, after, spec.surface, spec.name)
            check_compiles(after, {e.path for e in tech.edits})
            check_forbidden(files, after, FORBIDDEN)
        # What a specialist finds at this scale never edits the other scale's values.
        assert not spec.surface.touches(f"scale_{'full' if variant == 'mini' else 'mini'}.py")
    assert all(COMMON_CATALOG[k] for k in ("arch", "opt", "sched", "sys"))


# -- shard loaders (full variant formats) ---------------------------------------------------------------------

class FakeGPT2:
    name, bos_id, vocab_size = "gpt2", 50256, 50304

    def token_bytes(self, i: int) -> bytes:
        return b"ab" if i % 2 else b"c"


def write_bin(path: Path, tokens: list[int]) -> None:
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (20240520, 1, len(tokens))
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.array(tokens, dtype=np.uint16).tobytes())


def test_bin_shards_feed_the_full_loader_and_the_validation_reader(tmp_path: Path) -> None:
    dl = load(RECIPE / "dataloader.py", "_nc_test_dataloader")
    (tmp_path / "shards").mkdir()
    toks = [50256, 1, 2, 3, 50256, 4, 5, 6, 7]
    write_bin(tmp_path / "shards" / "fineweb_train_000001.bin", toks)
    batches = dl.make_loader(SimpleNamespace(data_dir=tmp_path), FakeGPT2(), 2, 2, "cpu", source="shards")
    x, y = next(batches)
    assert x.tolist() == [[50256, 1], [2, 3]] and y.tolist() == [[1, 2], [3, 50256]]
    x, y = next(batches)
    assert x.tolist() == [[50256, 4], [5, 6]] and y.tolist() == [[4, 5], [6, 7]]
    docs = list(evaluator.iter_shard_documents(tmp_path / "shards" / "fineweb_train_000001.bin", FakeGPT2()))
    assert docs == [([1, 2, 3], 5), ([4, 5, 6, 7], 6)]  # odd ids are 2 bytes, even ids 1 byte
    with pytest.raises(ValueError, match="TOKENIZER = 'gpt2'"):
        next(dl.make_loader(SimpleNamespace(data_dir=tmp_path), SimpleNamespace(name="bytes", bos_id=256), 1, 2,
                            "cpu", source="shards"))
    with pytest.raises(ValueError, match="unknown DATA_SOURCE"):
        dl.make_loader(SimpleNamespace(data_dir=tmp_path), FakeGPT2(), 1, 2, "cpu", source="nope")


def test_jsonl_shards_are_tokenized_with_bos_per_document(tmp_path: Path) -> None:
    dl = load(RECIPE / "dataloader.py", "_nc_test_dataloader")
    tok = load(RECIPE / "tokenizer.py", "_nc_test_tokenizer").ByteTokenizer()
    (tmp_path / "shards").mkdir()
    with gzip.open(tmp_path / "shards" / "shard_00000.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "ab"}) + "\n" + json.dumps({"text": "cd"}) + "\n")
    x, y = next(dl.make_loader(SimpleNamespace(data_dir=tmp_path), tok, 1, 5, "cpu", source="shards"))
    assert x.tolist() == [[256, 97, 98, 256, 99]] and y.tolist() == [[97, 98, 256, 99, 100]]


# -- both variants through the real phases --------------------------------------------------------------------

def patched_recipe(src: Path, dst: Path, changes: dict[str, str]) -> Path:
    """A copy of the recipe with each ``old`` text replaced where it occurs once (train.py or a scale file)."""
    shutil.copytree(src, dst)
    files = {p: p.read_text() for p in [dst / "train.py", *dst.glob("scale_*.py")]}
    for old, new in changes.items():
        where = [p for p, text in files.items() if old in text]
        assert len(where) == 1 and files[where[0]].count(old) == 1, old
        files[where[0]] = files[where[0]].replace(old, new)
    for p, text in files.items():
        p.write_text(text)
    return dst


def run_phases(tmp: Path, recipe: Path, variant: str, options: dict) -> dict:
    """stage -> train (seed 0) -> evaluate, run as ``TaskRun.execute`` runs them: task code in plain processes,
    the recipe in its sandbox (bubblewrap where it runs here) with the train folder as its data."""
    from pytest_autoresearch.integrity import check_outputs, freeze
    from pytest_autoresearch.runner import Phase, run_phase, scrubbed_env
    from pytest_autoresearch.sandbox import Bind, Limits, Sandbox, detect, sandbox_to_json

    for d in ("train", "test", "priv", "out/seed-0", "cache", "home"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    env = scrubbed_env(tmp / "cache", tmp / "home", threads=2)
    sb = Sandbox(detect("auto"), Limits(), device="cpu", protected=[HERE])
    task_ctx = dict(seeds=[0], device="cpu", variant=variant, threads=2, train_dir=str(tmp / "train"),
                    test_dir=str(tmp / "test"), private_dir=str(tmp / "priv"),
                    evaluator_script=str(HERE / "evaluator.py"), function="evaluate", options=options,
                    artifact_bytes=None)
    r = run_phase(Phase("stage", dict(task_ctx, outputs_dir=None, workspace=None), work_dir=tmp / "w" / "stage",
                        limit_s=240, env=env), None)
    assert r.ok, f"stage failed: {r.deepest_error()}\n{r.log_tail()}"
    binds = {"recipe": Bind(recipe, "ro"), "cache": Bind(tmp / "cache", "overlay"), "data": Bind(tmp / "train", "ro"),
             "out": Bind(tmp / "out" / "seed-0", "rw")}
    r = run_phase(Phase("train", dict(seeds=[0], seed=0, device="cpu", variant=variant, threads=2, preload=["torch"],
                                      recipe_options={}), work_dir=tmp / "w" / "train", limit_s=240, timed=True,
                        binds=binds, threads=2, env=None if sb.sandboxed else env), sb)
    assert r.ok, f"train failed: {r.deepest_error()}\n{r.log_tail()}"
    assert check_outputs(tmp / "out") is None
    freeze(tmp / "out")
    r = run_phase(Phase("evaluate", dict(task_ctx, outputs_dir=str(tmp / "out"), workspace=str(recipe),
                                         sandbox=sandbox_to_json(sb)), work_dir=tmp / "w" / "eval", limit_s=240,
                        env=env), None)
    assert r.ok, f"evaluate failed: {r.deepest_error()}\n{r.log_tail()}"
    # The recipe was given training data only; evaluation items and held-out text stayed private.
    assert sorted(p.name for p in (tmp / "train").iterdir()) == (
        ["procedural_train.jsonl", "train_docs.jsonl"] if variant == "mini" else ["shards"])
    assert not any((tmp / "test").iterdir())
    # Model and tokenizer each ran in a model server of their own.
    assert len(list((tmp / "w" / "eval").glob("model-server-*.log"))) == 2
    return r.result


def test_mini_baseline_runs_through_phases_and_is_scored(tmp_path: Path) -> None:
    recipe = patched_recipe(RECIPE, tmp_path / "recipe", {
        "NUM_ITERATIONS = 160": "NUM_ITERATIONS = 4"})
    options = dict(MINI_OPTIONS, items_per_task=20, procedural_blocks=60, bpb_bytes=4000)
    m = run_phases(tmp_path, recipe, "mini", options)
    assert m["train_steps"] == 4 and m["train_tokens"] == 4 * 2048
    assert set(m) >= {f"centered/{t}" for t in mc.TASKS} | {"mini_core", "bpb", "causal", "tokenizer_roundtrip"}
    assert m["mini_core"] == pytest.approx(sum(m[f"centered/{t}"] for t in mc.TASKS) / len(mc.TASKS))
    assert m["mini_core_per_seed"] == [m["mini_core"]]
    assert m["causal"] is True and m["tokenizer_roundtrip"] is True and m["logprobs_normalized"] is True
    assert m["causal_probes"] >= 3 and m["causal_max_leak"] <= 1e-3 and m["logprobs_max_error"] <= 1e-3
    assert 0 < m["bpb"] < math.log2(320)  # below the uniform byte model after 4 steps
    assert (tmp_path / "priv" / "minicore" / "core.yaml").is_file()
    staged_train = (tmp_path / "train" / "train_docs.jsonl").read_text()
    heldout_ids = {json.loads(line)["id"] for line in open(tmp_path / "priv" / "heldout.jsonl")}
    assert heldout_ids and not any(f'"id": "{i}"' in staged_train for i in heldout_ids)


def test_full_variant_runs_through_phases_on_toy_shards_and_bundle(tmp_path: Path) -> None:
    from test_nanochat_core import BASELINES, ITEMS, TASKS, write_bundle

    data = tmp_path / "data"
    data.mkdir()
    rng = random.Random(0)
    words = "the cat sat on a mat and then it ran far away".split()
    for name in ("shard_00000.jsonl", "shard_00001.jsonl"):  # the last shard is validation (nanochat)
        with open(data / name, "w") as f:
            for _ in range(40):
                f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(30))}) + "\n")
    bundle = write_bundle(tmp_path / "eval_bundle", TASKS, ITEMS, BASELINES)
    recipe = patched_recipe(RECIPE, tmp_path / "recipe", {
        'TOKENIZER = "gpt2"': 'TOKENIZER = "bytes"', "DEPTH = 12": "DEPTH = 1",
        "SEQUENCE_LEN = 2048": "SEQUENCE_LEN = 64",
        "DEVICE_BATCH_SIZE = 32": "DEVICE_BATCH_SIZE = 2", "TOTAL_BATCH_TOKENS = 524288": "TOTAL_BATCH_TOKENS = 256",
        "COMPILE = True": "COMPILE = False", "TARGET_PARAM_DATA_RATIO = 20.0": "TARGET_PARAM_DATA_RATIO = 0.01"})
    m = run_phases(tmp_path, recipe, "full", dict(eval_bundle=str(bundle), data_dir=str(data), core_max_per_task=-1,
                                                   bpb_tokens=3000, batch_tokens=4096, tiktoken_encodings=[]))
    assert set(m) >= {"core", "core_per_seed", "bpb", "centered/mc", "centered/schema", "centered/lm"}
    assert m["core"] == pytest.approx((m["centered/mc"] + m["centered/schema"] + m["centered/lm"]) / 3)
    assert m["causal"] is True and m["logprobs_normalized"] is True and 0 < m["bpb"] < 20
    assert [p.name for p in (tmp_path / "priv" / "val").iterdir()] == ["shard_00001.jsonl"]
    # The training shard is a file the sandbox can read (a symbolic link would point outside it).
    staged = tmp_path / "train" / "shards" / "shard_00000.jsonl"
    assert not staged.is_symlink() and staged.read_bytes() == (data / "shard_00000.jsonl").read_bytes()


def test_full_stage_says_what_is_missing(tmp_path: Path) -> None:
    ctx = SimpleNamespace(variant="full", options={}, train_dir=tmp_path, test_dir=tmp_path, private_dir=tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("NANOCHAT_DATA_DIR", raising=False)
        with pytest.raises(FileNotFoundError, match="NANOCHAT_DATA_DIR"):
            evaluator.stage(ctx)
