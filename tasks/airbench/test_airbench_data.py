"""Ordinary tests of the airbench task: data staging, the recipes through real phases, the catalogs."""
from __future__ import annotations

import dataclasses
import importlib.util
import pickle
import shutil
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest

from pytest_autoresearch import Evaluator, Objective, Specialist, Surface
from pytest_autoresearch.edits import Edit, apply_edits, check_compiles, check_surface, region_names
from pytest_autoresearch.runtime import EvalContext

HERE = Path(__file__).resolve().parent
EVALUATOR = HERE / "airbench_evaluator.py"
REGIONS = ("arch", "opt", "aug", "loss", "reg")
RECIPE = HERE / "recipe"
SCALE_FULL = "scale_full.py"


def _recipe_files() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(RECIPE.glob("*.py"))}


def _load(name: str, path: Path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


ev = _load("airbench_evaluator", EVALUATOR)
specs = _load("airbench_specialists", HERE / "airbench_specialists.py")
task = _load("airbench_task_module", HERE / "test_airbench.py")


# ---------------------------------------------------------------- fake CIFAR-10 in the real pickle format


def _fake_images(labels: np.ndarray, palette: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """N x 3072 uint8 rows (R plane, G plane, B plane); each class has its own colour, so it is learnable."""
    planes = palette[labels][:, :, None] + rng.normal(0, 40, size=(len(labels), 3, 1024))
    return np.clip(planes, 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def make_fake_cifar(root: Path, per_batch: int = 16, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """A ``cifar-10-batches-py`` folder under ``root`` with tiny batches; returns what was written."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    palette = rng.integers(0, 256, size=(10, 3))
    written = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        data = _fake_images(labels, palette, rng)
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": data,
                         b"filenames": [b"x.png"] * n}, f)
        written[name] = (data, labels)
    return written


def _ctx(tmp: Path, variant: str, options: dict, outputs: Path | None = None, seeds=(0,)) -> EvalContext:
    return EvalContext(outputs_dir=outputs, seeds=tuple(seeds), workspace=None, train_dir=tmp / "train",
                       test_dir=tmp / "test", private_dir=tmp / "private", device="cpu", variant=variant,
                       options=options)


def test_full_stage_reads_pickle_batches_and_hides_test_labels(tmp_path):
    written = make_fake_cifar(tmp_path / "data")
    train, test, priv = tmp_path / "train", tmp_path / "test", tmp_path / "private"
    ev.stage(_ctx(tmp_path, "full", {"cifar_dir": str(tmp_path / "data")}))

    assert sorted(p.name for p in train.iterdir()) == ["train_images.npy", "train_labels.npy"]
    assert sorted(p.name for p in test.iterdir()) == ["test_images.npy"]
    assert sorted(p.name for p in priv.iterdir()) == ["test_labels.npy"]
    xtr, ytr = np.load(train / "train_images.npy"), np.load(train / "train_labels.npy")
    xte, yte = np.load(test / "test_images.npy"), np.load(priv / "test_labels.npy")
    assert xtr.shape == (80, 3, 32, 32) and xtr.dtype == np.uint8
    assert ytr.shape == (80,) and ytr.dtype == np.int64
    assert xte.shape == (20, 3, 32, 32) and xte.dtype == np.uint8
    assert yte.dtype == np.int64
    # Rows are R, G, B planes of 32x32 in row-major order; batches are concatenated in order 1..5.
    d2, l2 = written["data_batch_2"]
    np.testing.assert_array_equal(xtr[16:32, 1, 3, 5], d2[:, 1024 + 3 * 32 + 5])
    np.testing.assert_array_equal(ytr[16:32], l2)
    np.testing.assert_array_equal(yte, written["test_batch"][1])
    np.testing.assert_array_equal(xte[:, 2].reshape(20, -1), written["test_batch"][0][:, 2048:])


def test_full_stage_accepts_the_tarball_and_the_download_cache(tmp_path):
    make_fake_cifar(tmp_path / "src")
    tgz = tmp_path / "cache" / "cifar-10-python.tar.gz"
    tgz.parent.mkdir()
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    # An archive already in the download cache is used without any network access.
    found = ev.find_cifar10({"download_dir": str(tgz.parent)})
    assert found == tgz.parent / "cifar-10-batches-py" and (found / "test_batch").is_file()
    # ... and so is an archive named directly.
    shutil.rmtree(found)
    assert (ev.find_cifar10({"cifar_dir": str(tgz)}) / "data_batch_5").is_file()


def test_full_stage_missing_data_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="AUTORESEARCH_CIFAR10"):
        ev.find_cifar10({"cifar_dir": str(tmp_path / "nowhere")})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8),
                                                                  b"labels": [0, 1]}))
    with pytest.raises(ValueError, match="3072"):
        ev._read_batch(tmp_path / "bad" / "data_batch_1")


def test_mini_stage_split_is_fixed_stratified_and_label_free(tmp_path):
    ev.stage(_ctx(tmp_path, "mini", {}))
    xtr, ytr = (np.load(tmp_path / "train" / f"{n}.npy") for n in ("train_images", "train_labels"))
    xte, yte = np.load(tmp_path / "test" / "test_images.npy"), np.load(tmp_path / "private" / "test_labels.npy")
    assert xtr.shape == (1297, 1, 8, 8) and xte.shape == (500, 1, 8, 8) and xtr.dtype == np.uint8
    assert xtr.max() == 255 and xtr.min() == 0
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == ["test_images.npy"]
    assert np.bincount(yte, minlength=10).min() >= 48  # stratified: ~50 per class
    again = ev.load_digits_split()
    np.testing.assert_array_equal(again[3], yte)


def test_evaluate_scores_each_seed_and_flags_bad_outputs(tmp_path):
    priv, out = tmp_path / "private", tmp_path / "out"
    priv.mkdir()
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    np.save(priv / "test_labels.npy", labels)
    for seed, pred in [(0, labels), (1, np.where(labels < 5, labels, 0))]:
        (out / f"seed-{seed}").mkdir(parents=True)
        np.save(out / f"seed-{seed}" / "predictions.npy", pred)
    m = ev.evaluate(_ctx(tmp_path, "mini", {}, outputs=out, seeds=(0, 1)))
    assert m["acc_per_seed"] == [1.0, 0.5] and m["acc_mean"] == 0.75 and m["acc_min"] == 0.5
    assert m["outputs_valid"] is True and m["n_test"] == 10

    np.save(out / "seed-1" / "predictions.npy", np.zeros(3, dtype=np.int64))
    m = ev.evaluate(_ctx(tmp_path, "mini", {}, outputs=out, seeds=(0, 1, 2)))
    assert m["acc_per_seed"] == [1.0, 0.0, 0.0] and m["outputs_valid"] is False
    assert "seed 1" in m["outputs_error"] and "seed 2" in m["outputs_error"]
    # A symlink to the labels is refused, not followed (the harness refuses the trial earlier anyway).
    (out / "seed-0" / "predictions.npy").unlink()
    (out / "seed-0" / "predictions.npy").symlink_to(priv / "test_labels.npy")
    m = ev.evaluate(_ctx(tmp_path, "mini", {}, outputs=out, seeds=(0,)))
    assert m["acc_per_seed"] == [0.0] and "not a regular file" in m["outputs_error"]


# ---------------------------------------------------------------- recipes through real phases


def _execute(tmp: Path, recipe: Path, variant: str, seeds, options=None):
    """Stage, then run ``recipe`` exactly as a trial does (sandboxed train and predict per seed, evaluate)."""
    from pytest_autoresearch.config import compose
    from pytest_autoresearch.task import Task
    from pytest_autoresearch.trial import TaskRun

    # One thread: these tests share two cores with the rest of the suite; the code paths are the same.
    budget = dataclasses.replace(task.budget_for(variant), seeds=tuple(seeds), threads=1, train_seconds=300,
                                 predict_seconds=120, eval_seconds=120, prepare_seconds=0)
    t = Task(name="airbench", module_path=HERE / "test_airbench.py", baseline_recipe=recipe, budget=budget,
             legality=(), evaluator=Evaluator(EVALUATOR, options=options or {}, hidden=task.hidden_for(variant)),
             objective=Objective("recipe_cpu_seconds", "minimize"),
             specialists=(Specialist("opt", Surface(regions=("train.py::opt",)), "-"),), variant=variant)
    run = TaskRun(t, root=tmp / "lineage", session_id="test", agent=None, agent_name="none", device="cpu",
                  cfg=compose(["lineage.keep_outputs=true"]))
    rec = run.plain_run(tmp / "work")
    assert rec["label"] == "baseline", rec["notes"]
    return rec, tmp / "work" / "run" / "out"


def _shrunk_full_recipe(dest: Path) -> Path:
    """The recipe with its full scale shrunk to run on CPU in seconds (the full scale's code paths)."""
    shutil.copytree(HERE / "recipe", dest)
    src = (dest / SCALE_FULL).read_text()
    edits = [Edit(SCALE_FULL, a, b) for a, b in [
        ("WIDTH1 = 128  #", "WIDTH1 = 8  #"), ("WIDTH2 = 512  #", "WIDTH2 = 16  #"),
        ("WIDTH3 = 512  #", "WIDTH3 = 16  #"), ("EPOCHS = 33.0  #", "EPOCHS = 8.0  #"),
        ("BATCH_SIZE = 1024  #", "BATCH_SIZE = 16  #"), ("LR = 9.0  #", "LR = 30.0  #"),
        ("EVAL_BATCH = 2000", "EVAL_BATCH = 8")]]
    (dest / SCALE_FULL).write_text(apply_edits({SCALE_FULL: src}, edits)[SCALE_FULL])
    return dest


def test_full_recipe_smoke_on_cpu_through_phases(tmp_path):
    make_fake_cifar(tmp_path / "cifar")
    recipe = _shrunk_full_recipe(tmp_path / "recipe")
    rec, out = _execute(tmp_path, recipe, "full", seeds=(0, 1), options={"cifar_dir": str(tmp_path / "cifar")})
    m = rec["metrics"]
    assert m["outputs_valid"] is True, m["outputs_error"]
    assert len(m["acc_per_seed"]) == 2 and m["n_test"] == 20
    # Colour-coded classes: even the shrunken net with flip/translate/cutout and TTA beats chance clearly.
    assert m["acc_mean"] > 0.3, m
    for seed in (0, 1):
        pred = np.load(out / f"seed-{seed}" / "predictions.npy")
        assert pred.shape == (20,) and pred.dtype == np.int64
    assert len(m["recipe_cpu_seconds_per_seed"]) == 2 and m["predict_cpu_seconds"] > 0


def test_mini_baseline_through_phases_is_accurate(tmp_path):
    rec, _ = _execute(tmp_path, RECIPE, "mini", seeds=(0,))
    m = rec["metrics"]
    assert m["outputs_valid"] is True and m["n_test"] == 500
    assert m["acc_mean"] >= 0.96, m  # the baseline reaches ~0.98 on every seed measured


# ---------------------------------------------------------------- specialists and catalogs


@pytest.mark.parametrize("variant", ["mini", "full"])
def test_catalog_edits_apply_inside_their_region_and_compile(variant):
    files = _recipe_files()
    assert set(files) == {"train.py", "scale_mini.py", "scale_full.py"}
    assert set(REGIONS) <= set(region_names(files["train.py"]))
    assert set(specs.SCALED) == set(region_names(files[f"scale_{variant}.py"]))
    team = specs.build_specialists(variant, task.GATE[variant])
    assert [s.name for s in team] == list(REGIONS)
    for s in team:
        assert 1 <= len(s.catalog) <= 3, s.name
        assert str(task.GATE[variant]) in s.brief
        # A specialist never owns the other scale's file: what it finds at one scale is that scale's values.
        assert not s.surface.touches(f"scale_{'full' if variant == 'mini' else 'mini'}.py"), s.name
        for t in s.catalog:
            after = apply_edits(files, t.edits)
            assert after != files, t.name
            check_surface(files, after, s.surface, s.name)
            check_compiles(after, {e.path for e in t.edits})


def test_one_recipe_the_scales_declare_only_what_differs():
    """Both scales run the same train.py; each scale file binds the same names (and nothing of the code)."""
    import ast

    names = {}
    for v in ("mini", "full"):
        tree = ast.parse((RECIPE / f"scale_{v}.py").read_text())
        assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Import,
                                                             ast.ImportFrom))], v
        names[v] = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets}
    assert names["mini"] - {"WIDTH3"} == names["full"] - {"WIDTH3"}  # full adds a third conv group
    shared = {t.id for n in ast.parse((RECIPE / "train.py").read_text()).body if isinstance(n, ast.Assign)
              for t in n.targets}
    assert not shared & names["mini"], shared & names["mini"]   # a knob lives in one place


def test_variants_have_their_own_catalog_budget_and_gate():
    full = {s.name: s for s in specs.build_specialists("full", 0.96)}
    mini = {s.name: s for s in specs.build_specialists("mini", 0.978)}
    assert {t.name for t in full["arch"].catalog} != {t.name for t in mini["arch"].catalog}
    assert task.budget_for("full").seeds == tuple(range(10)) and task.budget_for("full").prepare_seconds > 0
    assert task.budget_for("mini").threads == 1 and "torch" in task.budget_for("mini").preload
    for variant in ("mini", "full"):
        for text in _recipe_files().values():
            # The baseline itself never touches evaluator-owned data.
            assert not any(__import__("re").search(p, text) for p in task.FORBIDDEN[variant]), variant


def test_full_prepare_warms_up_on_random_tensors_without_data(tmp_path, monkeypatch):
    """prepare(ctx) gets no data: it must build, train and run TTA on random tensors of the right shape."""
    recipe = _shrunk_full_recipe(tmp_path / "recipe")
    mod = _load("airbench_recipe_full_shrunk", recipe / "train.py")
    compiled = []
    monkeypatch.setattr(mod, "maybe_compile", lambda net: compiled.append(net) or net)  # CPU: skip inductor
    ctx = types.SimpleNamespace(seed=0, seeds=(0,), out_dir=None, data_dir=None, cache_dir=tmp_path, device="cpu",
                                variant="full", threads=1, options={})
    # COMPILE is a setting of the scale: turn it on in the full scale file prepare() binds.
    (recipe / SCALE_FULL).write_text((recipe / SCALE_FULL).read_text().replace("COMPILE = False", "COMPILE = True"))
    mod.prepare(ctx)
    assert len(compiled) == 1 and compiled[0].whiten.weight.shape[1] == mod.IMAGE_SHAPE[0] == 3
    assert [g.conv1.out_channels for g in compiled[0].groups] == [8, 16, 16]   # the shrunk full scale's widths
    (recipe / SCALE_FULL).write_text((recipe / SCALE_FULL).read_text().replace("COMPILE = True", "COMPILE = False"))
    compiled.clear()
    mod.prepare(ctx)  # nothing to warm up without compile
    assert compiled == []
