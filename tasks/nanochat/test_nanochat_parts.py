"""NanoChat task parts: mini-CORE generators, the model, the shard loaders, the catalog, and both variants run
through the real trial phases (stage -> train -> evaluate) at toy size."""
from __future__ import annotations

import gzip
import importlib.util
import json
import math
import random
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import nanochat_core  # noqa: E402
import nanochat_minicore as mc  # noqa: E402
from test_nanochat import COMMON_CATALOG, FORBIDDEN, MINI_OPTIONS, make_specialists  # noqa: E402

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


gpt = load(HERE / "recipe_mini" / "gpt.py", "_nc_test_gpt")
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


def test_causality_probe_catches_a_model_that_sees_the_future() -> None:
    src = (HERE / "recipe_mini" / "gpt.py").read_text()
    leaky = load(HERE / "recipe_mini" / "gpt.py", "_nc_test_leaky",
                 src.replace("is_causal=True", "is_causal=False"))
    for mod, expect in ((gpt, True), (leaky, False)):
        torch.manual_seed(0)
        model = mod.GPT(mod.config_for_depth(2, 320, 64))
        model.init_weights()
        for block in model.transformer.h:  # the zero-init projections hide attention entirely
            torch.nn.init.normal_(block.attn.c_proj.weight, std=0.1)
        torch.nn.init.normal_(model.lm_head.weight, std=0.1)
        ok, leak = evaluator.causality_probe(model.eval(), 320, "cpu")
        assert ok is expect, leak


def test_manual_attention_path_matches_sdpa() -> None:
    src = (HERE / "recipe_mini" / "gpt.py").read_text()
    manual = load(HERE / "recipe_mini" / "gpt.py", "_nc_test_manual",
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


def test_shared_code_is_identical_in_both_variants() -> None:
    for name in ("gpt.py", "tokenizer.py"):
        assert (HERE / "recipe_mini" / name).read_text() == (HERE / "recipe_full" / name).read_text(), name
    loops = [(HERE / f"recipe_{v}" / "train.py").read_text().rsplit("# autoresearch: end", 1)[1]
             for v in ("mini", "full")]
    assert loops[0] == loops[1], "the training loop (after the last region) must be the same in both variants"


@pytest.mark.parametrize("variant", ["mini", "full"])
def test_catalog_techniques_apply_inside_their_surface(variant: str) -> None:
    recipe = HERE / f"recipe_{variant}"
    files = {p.name: p.read_text() for p in recipe.glob("*.py")}
    specs = make_specialists(variant)
    assert [s.name for s in specs] == ["arch", "opt", "data", "sched", "sys"]
    for spec in specs:
        for tech in spec.catalog:
            after = apply_edits(files, tech.edits)
            check_surface(files, after, spec.surface, spec.name)
            check_compiles(after, {e.path for e in tech.edits})
            check_forbidden(files, after, FORBIDDEN)
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
    dl = load(HERE / "recipe_full" / "dataloader.py", "_nc_test_full_dataloader")
    (tmp_path / "shards").mkdir()
    toks = [50256, 1, 2, 3, 50256, 4, 5, 6, 7]
    write_bin(tmp_path / "shards" / "fineweb_train_000001.bin", toks)
    batches = dl.make_loader(SimpleNamespace(data_dir=tmp_path), FakeGPT2(), 2, 2, "cpu")
    x, y = next(batches)
    assert x.tolist() == [[50256, 1], [2, 3]] and y.tolist() == [[1, 2], [3, 50256]]
    x, y = next(batches)
    assert x.tolist() == [[50256, 4], [5, 6]] and y.tolist() == [[4, 5], [6, 7]]
    docs = list(evaluator.iter_shard_documents(tmp_path / "shards" / "fineweb_train_000001.bin", FakeGPT2()))
    assert docs == [([1, 2, 3], 5), ([4, 5, 6, 7], 6)]  # odd ids are 2 bytes, even ids 1 byte
    with pytest.raises(ValueError, match="TOKENIZER = 'gpt2'"):
        next(dl.make_loader(SimpleNamespace(data_dir=tmp_path), SimpleNamespace(name="bytes", bos_id=256), 1, 2,
                            "cpu"))


def test_jsonl_shards_are_tokenized_with_bos_per_document(tmp_path: Path) -> None:
    dl = load(HERE / "recipe_full" / "dataloader.py", "_nc_test_full_dataloader")
    tok = load(HERE / "recipe_full" / "tokenizer.py", "_nc_test_tokenizer").ByteTokenizer()
    (tmp_path / "shards").mkdir()
    with gzip.open(tmp_path / "shards" / "shard_00000.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "ab"}) + "\n" + json.dumps({"text": "cd"}) + "\n")
    x, y = next(dl.make_loader(SimpleNamespace(data_dir=tmp_path), tok, 1, 5, "cpu"))
    assert x.tolist() == [[256, 97, 98, 256, 99]] and y.tolist() == [[97, 98, 256, 99, 100]]


# -- both variants through the real phases --------------------------------------------------------------------

def patched_recipe(src: Path, dst: Path, changes: dict[str, str]) -> Path:
    shutil.copytree(src, dst)
    text = (dst / "train.py").read_text()
    for old, new in changes.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    (dst / "train.py").write_text(text)
    return dst


def run_phases(tmp: Path, recipe: Path, variant: str, options: dict) -> dict:
    from pytest_autoresearch.runner import run_phase, scrubbed_env

    for d in ("out", "pub", "priv", "cache", "home"):
        (tmp / d).mkdir(exist_ok=True)
    env = scrubbed_env(tmp / "cache", tmp / "home", threads=2)
    base = dict(seeds=[0], outputs_dir=str(tmp / "out"), public_dir=str(tmp / "pub"), private_dir=str(tmp / "priv"),
                cache_dir=str(tmp / "cache"), device="cpu", variant=variant, workspace=str(recipe),
                preload=["torch"], threads=2, evaluator_script=str(HERE / "evaluator.py"), options=options,
                artifact_bytes=None)
    for phase in ("stage", "train", "evaluate"):
        r = run_phase(phase, base, limit_s=240, work_dir=tmp / "w", env=env)
        assert r.ok, f"{phase} failed: {r.deepest_error()}\n{r.log_tail()}"
    # The recipe saw public data only; the held-out items stayed private.
    assert sorted(p.name for p in (tmp / "pub").iterdir()) == (
        ["procedural_train.jsonl", "train_docs.jsonl"] if variant == "mini" else ["shards"])
    return r.result


def test_mini_baseline_runs_through_phases_and_is_scored(tmp_path: Path) -> None:
    recipe = patched_recipe(HERE / "recipe_mini", tmp_path / "recipe", {
        "NUM_ITERATIONS = 160": "NUM_ITERATIONS = 4"})
    options = dict(MINI_OPTIONS, items_per_task=20, procedural_blocks=60, bpb_bytes=4000)
    m = run_phases(tmp_path, recipe, "mini", options)
    assert m["train_steps"] == 4 and m["train_tokens"] == 4 * 2048
    assert set(m) >= {f"centered/{t}" for t in mc.TASKS} | {"mini_core", "bpb", "causal", "tokenizer_roundtrip"}
    assert m["mini_core"] == pytest.approx(sum(m[f"centered/{t}"] for t in mc.TASKS) / len(mc.TASKS))
    assert m["mini_core_per_seed"] == [m["mini_core"]]
    assert m["causal"] is True and m["tokenizer_roundtrip"] is True
    assert 0 < m["bpb"] < math.log2(320)  # below the uniform byte model after 4 steps
    assert (tmp_path / "priv" / "minicore" / "core.yaml").is_file()
    staged_train = (tmp_path / "pub" / "train_docs.jsonl").read_text()
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
    recipe = patched_recipe(HERE / "recipe_full", tmp_path / "recipe", {
        'TOKENIZER = "gpt2"': 'TOKENIZER = "bytes"', "DEPTH = 12": "DEPTH = 1",
        "SEQUENCE_LEN = 2048": "SEQUENCE_LEN = 64",
        "DEVICE_BATCH_SIZE = 32": "DEVICE_BATCH_SIZE = 2", "TOTAL_BATCH_TOKENS = 524288": "TOTAL_BATCH_TOKENS = 256",
        "COMPILE = True": "COMPILE = False", "TARGET_PARAM_DATA_RATIO = 20.0": "TARGET_PARAM_DATA_RATIO = 0.01"})
    m = run_phases(tmp_path, recipe, "full", dict(eval_bundle=str(bundle), data_dir=str(data), core_max_per_task=-1,
                                                   bpb_tokens=3000, batch_tokens=4096))
    assert set(m) >= {"core", "core_per_seed", "bpb", "centered/mc", "centered/schema", "centered/lm"}
    assert m["core"] == pytest.approx((m["centered/mc"] + m["centered/schema"] + m["centered/lm"]) / 3)
    assert m["causal"] is True and 0 < m["bpb"] < 20
    assert [p.name for p in (tmp_path / "priv" / "val").iterdir()] == ["shard_00001.jsonl"]


def test_full_stage_says_what_is_missing(tmp_path: Path) -> None:
    ctx = SimpleNamespace(variant="full", options={}, public_dir=tmp_path, private_dir=tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("NANOCHAT_DATA_DIR", raising=False)
        with pytest.raises(FileNotFoundError, match="NANOCHAT_DATA_DIR"):
            evaluator.stage(ctx)
