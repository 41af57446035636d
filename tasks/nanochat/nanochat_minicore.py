"""mini-CORE: CORE-style tasks generated offline, written as a bundle in the DCLM layout (see nanochat_core).

Seven tasks, scored exactly like CORE (same renderer, same scorer, same centering):

==================  =================  =====  =========  ====================================================
label               kind               shots  random %   what the item is
==================  =================  =====  =========  ====================================================
dyck                language_modeling  3      0          close an unbalanced bracket prefix (()[]{}<>)
repeat_copy         language_modeling  3      0          say "red fox" 3 times: -> red fox red fox red fox
operators           language_modeling  3      0          max/min of two numbers, or n + small k
lastword            language_modeling  0      0          LAMBADA-like: the last word before a punctuation
                                                         mark, which also occurs earlier in the passage
continuation        multiple_choice    0      25         HellaSwag-like: true next 8 words vs 3 spans cut
                                                         from other held-out passages
context_schema      schema             0      50         Winograd-like: which of two preceding passages
                                                         (true / other document) leads to the continuation
word_order          multiple_choice    0      50         true next 6 words vs the same words shuffled
==================  =================  =====  =========  ====================================================

Procedural items come from ``random.Random`` seeded by the evaluator (private); the recipe-visible training mix
(``procedural_training_texts``) uses another seed and drops every example whose rendered text is an eval item.
Text items are cut from held-out documents only (never staged for the recipe).
"""
from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml

from nanochat_core import render_lm

BRACKETS = {"(": ")", "[": "]", "{": "}", "<": ">"}
WORDS = ("red blue green black white old new big small hot cold dark bright quiet loud fast slow happy sad "
         "fox dog cat bird fish tree stone river hill road house door book lamp cup ship king queen boy girl "
         "apple bread milk salt rain snow wind sun moon star day night time year hand eye head heart song "
         "word game ball bell coat hat shoe ring gold iron wood glass fire water earth cloud sky sea").split()

# label -> (icl_task_type, num_fewshot, random baseline in percent)
TASKS: dict[str, tuple[str, int, float]] = {
    "dyck": ("language_modeling", 3, 0.0),
    "repeat_copy": ("language_modeling", 3, 0.0),
    "operators": ("language_modeling", 3, 0.0),
    "lastword": ("language_modeling", 0, 0.0),
    "continuation": ("multiple_choice", 0, 25.0),
    "context_schema": ("schema", 0, 50.0),
    "word_order": ("multiple_choice", 0, 50.0),
}
PROCEDURAL = ("dyck", "repeat_copy", "operators")


# ----------------------------------------------------------------------------------------------------------------
# Procedural generators: each returns one {"context", "continuation"} item.

def gen_dyck(rng: random.Random) -> dict[str, str]:
    seq: list[str] = []
    stack: list[str] = []
    for _ in range(rng.randint(3, 10)):
        if stack and (rng.random() < 0.45 or len(stack) >= 4):
            seq.append(BRACKETS[stack.pop()])
        else:
            opener = rng.choice(list(BRACKETS))
            seq.append(opener)
            stack.append(opener)
    if not stack:
        opener = rng.choice(list(BRACKETS))
        seq.append(opener)
        stack.append(opener)
    return {"context": "dyck: " + " ".join(seq), "continuation": " ".join(BRACKETS[o] for o in reversed(stack))}


def gen_repeat_copy(rng: random.Random) -> dict[str, str]:
    phrase = " ".join(rng.sample(WORDS, rng.randint(1, 2)))
    n = rng.randint(2, 3)
    return {"context": f'say "{phrase}" {n} times:', "continuation": " ".join([phrase] * n)}


def gen_operators(rng: random.Random) -> dict[str, str]:
    op = rng.choice(("max", "min", "add"))
    if op == "add":
        a, b = rng.randint(10, 98), rng.randint(1, 9)
        return {"context": f"{a} + {b} =", "continuation": str(a + b)}
    a, b = rng.sample(range(100), 2)
    return {"context": f"{op}({a}, {b}) =", "continuation": str(max(a, b) if op == "max" else min(a, b))}


GENERATORS: dict[str, Callable[[random.Random], dict[str, str]]] = {
    "dyck": gen_dyck, "repeat_copy": gen_repeat_copy, "operators": gen_operators}


def procedural_items(task: str, n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict[str, str]]:
    """``n`` distinct items of a procedural task; items whose key (see ``item_key``) is in ``exclude`` are skipped."""
    rng = random.Random(f"{task}:{seed}")
    out: list[dict[str, str]] = []
    seen: set[str] = set(exclude)
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise RuntimeError(f"{task}: could not draw {n} distinct items (space exhausted?)")
        item = GENERATORS[task](rng)
        key = item_key(item)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def item_key(item: dict[str, str]) -> str:
    return f"{item['context'].strip()} {item['continuation']}"


def procedural_training_texts(n_blocks: int, seed: int, exclude: set[str], shots: tuple[int, int] = (3, 8)
                              ) -> list[dict[str, str]]:
    """Training documents: blocks of same-task examples rendered exactly like few-shot prompts.

    ``exclude`` holds the eval items' keys; none of them appears in any block.
    """
    rng = random.Random(f"blocks:{seed}")
    per_task = n_blocks * shots[1] // len(PROCEDURAL) + 1
    pools = {t: procedural_items(t, per_task, seed, exclude) for t in PROCEDURAL}
    out = []
    for b in range(n_blocks):
        task = PROCEDURAL[b % len(PROCEDURAL)]
        ex = rng.sample(pools[task], rng.randint(*shots))
        # The same rendering as a few-shot prompt: shots, then the last example with its continuation.
        text = render_lm(ex[-1], " ", ex[:-1])[1]
        out.append({"task": task, "text": text})
    rng.shuffle(out)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Items cut from held-out text.

def passages(texts: Iterable[str], min_words: int = 40) -> list[list[str]]:
    """Paragraphs of held-out documents as word lists (whitespace collapsed)."""
    out = []
    for text in texts:
        for para in re.split(r"\n\s*\n", text):
            words = para.split()
            if len(words) >= min_words:
                out.append(words)
    return out


def _strip_word(w: str) -> str:
    return w.strip(".,;:!?\"'()[]")


def text_items(task: str, paras: Sequence[list[str]], n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(f"{task}:{seed}")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(100 * n):
        if len(out) >= n:
            break
        words = rng.choice(paras)
        item = _TEXT_MAKERS[task](rng, words, paras)
        if item is None:
            continue
        key = json.dumps(item, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _lastword(rng: random.Random, words: list[str], paras: Sequence[list[str]]) -> dict | None:
    # A clause end (word of >= 3 letters before punctuation) whose word already occurred in the preceding
    # 12..40 words, as LAMBADA's targets need the wider context.
    ends = [i for i, w in enumerate(words) if i >= 12 and re.fullmatch(r"[A-Za-z]{3,}[.!?,;:]", w)]
    if not ends:
        return None
    i = rng.choice(ends)
    target = _strip_word(words[i])
    ctx = words[max(0, i - 40):i]
    if target.lower() not in {_strip_word(w).lower() for w in ctx}:
        return None
    return {"context": " ".join(ctx), "continuation": target}


def _span(rng: random.Random, words: list[str], length: int) -> list[str]:
    s = rng.randint(0, len(words) - length)
    return words[s:s + length]


def _continuation(rng: random.Random, words: list[str], paras: Sequence[list[str]]) -> dict | None:
    s = rng.randint(0, len(words) - 33)
    query, true = words[s:s + 25], words[s + 25:s + 33]
    choices = [" ".join(true)]
    while len(choices) < 4:
        other = rng.choice(paras)
        if other is words:
            continue
        cand = " ".join(_span(rng, other, 8))
        if cand not in choices:
            choices.append(cand)
    gold_text = choices[0]
    rng.shuffle(choices)
    return {"query": " ".join(query), "choices": choices, "gold": choices.index(gold_text)}


def _context_schema(rng: random.Random, words: list[str], paras: Sequence[list[str]]) -> dict | None:
    s = rng.randint(0, len(words) - 28)
    ctx, cont = " ".join(words[s:s + 20]), " ".join(words[s + 20:s + 28])
    other = rng.choice(paras)
    if other is words:
        return None
    options = [ctx, " ".join(_span(rng, other, 20))]
    gold = rng.randint(0, 1)
    if gold:
        options.reverse()
    return {"context_options": options, "continuation": cont, "gold": gold}


def _word_order(rng: random.Random, words: list[str], paras: Sequence[list[str]]) -> dict | None:
    s = rng.randint(0, len(words) - 26)
    query, true = words[s:s + 20], words[s + 20:s + 26]
    shuffled = list(true)
    for _ in range(10):
        rng.shuffle(shuffled)
        if shuffled != true:
            break
    else:
        return None
    choices = [" ".join(true), " ".join(shuffled)]
    gold = rng.randint(0, 1)
    if gold:
        choices.reverse()
    return {"query": " ".join(query), "choices": choices, "gold": gold}


_TEXT_MAKERS = {"lastword": _lastword, "continuation": _continuation, "context_schema": _context_schema,
                "word_order": _word_order}


# ----------------------------------------------------------------------------------------------------------------

def build_items(heldout_texts: Sequence[str], seed: int, n_items: int) -> dict[str, list[dict[str, Any]]]:
    """All mini-CORE items, by task label (deterministic in ``seed`` and the held-out texts)."""
    paras = passages(heldout_texts)
    if len(paras) < 20:
        raise ValueError(f"mini-CORE needs held-out paragraphs of >= 40 words; found only {len(paras)}")
    items: dict[str, list[dict[str, Any]]] = {}
    for task in TASKS:
        if task in PROCEDURAL:
            items[task] = procedural_items(task, n_items, seed)
        else:
            items[task] = text_items(task, paras, n_items, seed)
            if len(items[task]) < n_items // 4:
                raise ValueError(f"mini-CORE task {task}: only {len(items[task])} items from the held-out text")
    return items


def write_bundle(out_dir: Path, items: dict[str, list[dict[str, Any]]]) -> Path:
    """Write ``items`` as a DCLM-layout bundle (core.yaml, eval_meta_data.csv, eval_data/mini/<task>.jsonl)."""
    out_dir = Path(out_dir)
    (out_dir / "eval_data" / "mini").mkdir(parents=True, exist_ok=True)
    tasks_cfg = []
    for label, rows in items.items():
        kind, shots, _ = TASKS[label]
        uri = f"mini/{label}.jsonl"
        with open(out_dir / "eval_data" / uri, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        tasks_cfg.append({"label": label, "dataset_uri": uri, "num_fewshot": [shots], "icl_task_type": kind,
                          "continuation_delimiter": " "})
    (out_dir / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": tasks_cfg}, sort_keys=False), encoding="utf-8")
    with open(out_dir / "eval_meta_data.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Eval Task", "Task Category", "Task Type", "#shots", "Random baseline"])
        for label in items:
            kind, shots, rb = TASKS[label]
            w.writerow([label, "procedural" if label in PROCEDURAL else "heldout_text", kind, shots, rb])
    return out_dir


def eval_keys(items: dict[str, list[dict[str, Any]]]) -> set[str]:
    return {item_key(it) for t in PROCEDURAL for it in items.get(t, [])}
