"""Edits apply exactly once; surfaces are enforced by what changed, not by what the agent claims."""
from __future__ import annotations

import pytest

from pytest_autoresearch.edits import (Edit, EditError, SurfaceViolation, apply_edits, check_compiles, check_forbidden,
                                       check_surface, code_hash, content_hash, region_text)
from pytest_autoresearch.task import Surface

TRAIN = """import torch
# autoresearch: begin opt
lr = 0.1
# autoresearch: end opt
# autoresearch: begin arch
width = 64
# autoresearch: end arch
EPOCHS = 5
"""
FILES = {"train.py": TRAIN, "model.py": "class M: pass\n"}
OPT = Surface(regions=("train.py::opt",))


def test_apply_replaces_exactly_one_match():
    out = apply_edits(FILES, [Edit("train.py", "lr = 0.1", "lr = 0.2")])
    assert "lr = 0.2" in out["train.py"] and FILES["train.py"].count("lr = 0.1") == 1


@pytest.mark.parametrize("edit, msg", [
    (Edit("train.py", "lr = 9", "x"), "was not found"),
    (Edit("train.py", "# autoresearch: end", "x"), "matches 2 times"),
    (Edit("nope.py", "a", "b"), "does not exist"),
    (Edit("../evil.py", "a", "b"), "leaves the recipe folder"),
    (Edit("model.py", "", "x", create=True), "already exists"),
])
def test_edits_that_do_not_apply_say_why(edit, msg):
    with pytest.raises(EditError, match=msg):
        apply_edits(FILES, [edit])


def test_inside_the_region_is_allowed():
    after = apply_edits(FILES, [Edit("train.py", "lr = 0.1", "lr = 0.2\nmomentum = 0.9")])
    check_surface(FILES, after, OPT, "opt")
    assert region_text(after["train.py"], "opt") == "lr = 0.2\nmomentum = 0.9\n"


@pytest.mark.parametrize("edit, msg", [
    (Edit("train.py", "width = 64", "width = 128"), "outside region"),
    (Edit("train.py", "EPOCHS = 5", "EPOCHS = 1"), "outside region"),
    (Edit("train.py", "# autoresearch: end opt\n", ""), "outside region"),
    (Edit("model.py", "pass", "x = 1"), "outside the surface"),
    (Edit("new.py", "", "x = 1", create=True), "creates new.py"),
])
def test_outside_the_surface_is_a_violation(edit, msg):
    after = apply_edits(FILES, [edit])
    with pytest.raises(SurfaceViolation, match=msg):
        check_surface(FILES, after, OPT, "opt")


def test_file_globs_allow_whole_files_and_new_files():
    s = Surface(files=("models/*.py",))
    before = {"models/a.py": "x = 1\n"}
    after = apply_edits(before, [Edit("models/b.py", "", "y = 2\n", create=True), Edit("models/a.py", "x = 1", "x = 3")])
    check_surface(before, after, s, "arch")


def test_forbidden_text_is_refused_only_when_added():
    before = {"train.py": "path = 'public/x.npy'\n"}
    after = apply_edits(before, [Edit("train.py", "public", "private")])
    with pytest.raises(SurfaceViolation, match="evaluator-owned"):
        check_forbidden(before, after, (r"private",))
    check_forbidden(before, before, (r"public",))


def test_compile_check_names_file_and_line():
    bad = {"train.py": "x = (\n"}
    with pytest.raises(EditError, match=r"train.py does not compile.*line 1"):
        check_compiles(bad, {"train.py"})


def test_code_hash_is_blind_to_comments_and_layout_but_not_to_code():
    base = {"train.py": "LR = 0.1\n\ndef train(ctx):\n    return LR\n", "notes.txt": "a"}
    relaid = {"train.py": "LR = 0.10  # tuned\n\n\ndef train(ctx):  # the loop\n    return (LR)\n", "notes.txt": "a"}
    assert content_hash(relaid) != content_hash(base) and code_hash(relaid) == code_hash(base)
    assert code_hash({**base, "train.py": base["train.py"].replace("0.1", "0.2")}) != code_hash(base)
    assert code_hash({**base, "notes.txt": "b"}) != code_hash(base), "other files count by their text"
    broken = {"train.py": "def train(:\n"}
    assert code_hash(broken) != code_hash({"train.py": "def train(:  \n"}), "unparsable: its text"


@pytest.mark.parametrize("src", ["x = " + "1+" * 200_000 + "1\n", "x = 1\0\n"], ids=["deep", "null-byte"])
def test_code_the_compiler_cannot_take_is_a_refused_edit_not_a_harness_error(src):
    # An agent's edit must never raise past the preflight (it would be labelled the harness' own bug).
    with pytest.raises(EditError, match="does not compile after the edit"):
        check_compiles({"train.py": src}, {"train.py"})
    assert code_hash({"train.py": src}) == code_hash({"train.py": src}), "hashed by its text"
