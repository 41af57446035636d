"""CORE scoring on a tiny bundle in the real DCLM layout, with answers worked out by hand.

The model is a "copy" model: at every position it puts logit 10 on the current token and 0 elsewhere, so it
predicts "the next token repeats this one". Under it a scored token costs ~0 nats when it equals its predecessor
and ~10 nats otherwise, which makes every item's outcome checkable on paper.
"""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nanochat_core as core  # noqa: E402


class Bytes:
    bos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def copy_logits(ids: torch.Tensor) -> torch.Tensor:
    return 10.0 * torch.nn.functional.one_hot(ids, 320).float()


copy_model = core.from_logits(copy_logits)


def write_bundle(root: Path, tasks: list[dict], items: dict[str, list[dict]], baselines: dict[str, float]) -> Path:
    (root / "eval_data" / "kind").mkdir(parents=True)
    for t in tasks:
        with open(root / "eval_data" / t["dataset_uri"], "w") as f:
            f.writelines(json.dumps(it) + "\n" for it in items[t["label"]])
    (root / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": tasks}))
    with open(root / "eval_meta_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Eval Task", "Task Category", "Task Type", "Num Shots", "Random baseline", "Centered Metric?"])
        for label, rb in baselines.items():
            w.writerow([label, "x", "x", 0, rb, "yes"])
    return root


TASKS = [
    # multiple choice, default delimiter " " (key omitted as in many real core.yaml entries)
    {"label": "mc", "dataset_uri": "kind/mc.jsonl", "num_fewshot": [0], "icl_task_type": "multiple_choice"},
    {"label": "schema", "dataset_uri": "kind/schema.jsonl", "num_fewshot": [0], "icl_task_type": "schema",
     "continuation_delimiter": ""},
    {"label": "lm", "dataset_uri": "kind/lm.jsonl", "num_fewshot": [1], "icl_task_type": "language_modeling",
     "continuation_delimiter": ""},
]
ITEMS = {
    # The choices share their first byte, which belongs to the common prefix; the rest is scored.
    # "xxxx" repeats itself (loss ~0); "xyxy" never does (loss ~10) -> the model always picks "xxxx".
    "mc": [
        {"query": "Q1", "choices": ["xxxx", "xyxy"], "gold": 0},  # right
        {"query": "Q2", "choices": ["xyxy", "xxxx"], "gold": 1},  # right
        {"query": "Q3", "choices": ["zzzz", "zaza", "zbzb", "zczc"], "gold": 0},  # right
        {"query": "Q4", "choices": ["xxxx", "xyxy"], "gold": 1},  # wrong
    ],
    # Common suffix "bbb" is scored; it is predicted from the context's last byte, then from b, b.
    # Context ending in "b" costs 0, ending in "a" costs 10 on the first suffix token -> picks the "...b" context.
    "schema": [
        {"context_options": ["xa", "xb"], "continuation": "bbb", "gold": 1},  # right
        {"context_options": ["ya", "yb"], "continuation": "bbb", "gold": 0},  # wrong
    ],
    # Exact greedy match: the continuation must repeat the context's last byte all the way.
    "lm": [
        {"context": "ab", "continuation": "bbb"},   # right
        {"context": "ab ", "continuation": "bb"},   # right: the context is trimmed to "ab"
        {"context": "ab", "continuation": "bbc"},   # wrong
        {"context": "ab", "continuation": "cc"},    # wrong
    ],
}
BASELINES = {"mc": 25.0, "schema": 50.0, "lm": 0.0}


def test_core_on_tiny_bundle_matches_hand_computed_scores(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "eval_bundle", TASKS, ITEMS, BASELINES)
    res = core.evaluate_core(copy_model, Bytes(), bundle)
    assert res["results"] == {"mc": 0.75, "schema": 0.5, "lm": 0.5}
    # centered = (acc - rb/100) / (1 - rb/100)
    assert res["centered"]["mc"] == pytest.approx((0.75 - 0.25) / 0.75)  # 0.6667
    assert res["centered"]["schema"] == pytest.approx(0.0)
    assert res["centered"]["lm"] == pytest.approx(0.5)
    assert res["core"] == pytest.approx((2 / 3 + 0.0 + 0.5) / 3)  # 0.3889


def test_core_batching_and_max_per_task_do_not_change_answers(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", TASKS, ITEMS, BASELINES)
    one_row = core.evaluate_core(copy_model, Bytes(), bundle, batch_tokens=1)
    assert one_row["results"] == {"mc": 0.75, "schema": 0.5, "lm": 0.5}
    few_positions = core.evaluate_core(copy_model, Bytes(), bundle, max_scored=3)
    assert few_positions["results"] == {"mc": 0.75, "schema": 0.5, "lm": 0.5}
    # nanochat shuffles with Random(1337) before subsampling: the first two mc items after that shuffle.
    import random

    order = list(range(4))
    random.Random(1337).shuffle(order)
    expect = sum(i != 3 for i in order[:2]) / 2  # item index 3 is the one the model gets wrong
    sub = core.evaluate_task(copy_model, Bytes(), ITEMS["mc"], core.load_tasks(bundle)[0], max_per_task=2)
    assert sub == expect


def test_the_model_is_asked_only_for_the_positions_that_predict_a_span() -> None:
    rows = [(list(b"\x00abcd"), 3, 5), (list(b"\x00xy"), 1, 3)]  # spans "cd" and "xy"
    asked: list[tuple[int, int]] = []

    def scorer(ids: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        asked.extend(zip(r.tolist(), c.tolist()))
        assert ids.shape == (2, 5) and ids[0, 3:].tolist() == [256, 256]  # right-padded with BOS
        return copy_model(ids, r, c)

    (loss_cd, hit_cd), (loss_xy, hit_xy) = core.score_rows(scorer, rows, pad_id=256, max_scored=4)
    # sorted by length: row 0 of the batch is "\0xy" (positions 0, 1), row 1 is "\0abcd" (positions 2, 3)
    assert sorted(asked) == [(0, 0), (0, 1), (1, 2), (1, 3)]
    miss = math.log(math.exp(10.0) + 319)  # -log p of a token that does not repeat its predecessor
    assert loss_cd == pytest.approx(miss) and not hit_cd  # "c" after "b", "d" after "c"
    assert loss_xy == pytest.approx(miss) and not hit_xy


def test_centering_formula() -> None:
    assert core.centered(0.25, 25.0) == 0.0
    assert core.centered(1.0, 25.0) == 1.0
    assert core.centered(0.625, 50.0) == pytest.approx(0.25)
    assert core.centered(0.1, 0.0) == pytest.approx(0.1)
    assert core.centered(0.0, 50.0) == pytest.approx(-1.0)


def test_prompt_rendering_matches_nanochat_templates() -> None:
    mc_shot = {"query": "Q0", "choices": ["no", "yes"], "gold": 1}
    assert core.render_mc({"query": "Q1", "choices": ["a", "b"]}, " ", [mc_shot]) == [
        "Q0 yes\n\nQ1 a", "Q0 yes\n\nQ1 b"]
    sc_shot = {"context_options": ["c0", "c1"], "continuation": "k", "gold": 0}
    assert core.render_schema({"context_options": ["A", "B"], "continuation": "end"}, " ", [sc_shot]) == [
        "c0 k\n\nA end", "c0 k\n\nB end"]
    lm_shot = {"context": " ctx0 ", "continuation": "ans0"}
    assert core.render_lm({"context": "What? ", "continuation": "ans"}, "\nAnswer: ", [lm_shot]) == [
        "ctx0\nAnswer: ans0\n\nWhat?\nAnswer:", "ctx0\nAnswer: ans0\n\nWhat?\nAnswer: ans"]


def test_long_prompts_are_cropped_from_the_left(tmp_path: Path) -> None:
    task = core.CoreTask("lm", "x", "language_modeling", 0, "")
    items = [{"context": "q" * 500 + "ab", "continuation": "bbb"}]
    rows = core.prepare_item(Bytes(), items, 0, task, max_seq_len=16)
    (ids, s, e), = rows
    assert len(ids) == 16 and ids[s:e] == list(b"bbb")
    assert core.evaluate_task(copy_model, Bytes(), items, task, max_seq_len=16) == 1.0


def test_bundle_errors_name_the_file_and_task(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", TASKS, ITEMS, {"mc": 25.0, "schema": 50.0})
    with pytest.raises(ValueError, match="'lm'"):
        core.load_tasks(bundle)
    with pytest.raises(FileNotFoundError, match="core.yaml"):
        core.load_tasks(tmp_path / "nowhere")
