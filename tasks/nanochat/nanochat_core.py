"""The CORE metric (DCLM, arXiv:2406.11794) as nanochat computes it, reading the DCLM eval bundle layout.

Bundle layout (``eval_bundle/`` as distributed with nanochat, or a mini bundle written by the task's ``stage``)::

    core.yaml               icl_tasks: [{label, dataset_uri, num_fewshot: [k], icl_task_type,
                                          continuation_delimiter (default " ")}, ...]
    eval_meta_data.csv      columns include "Eval Task" (= label) and "Random baseline" (percent)
    eval_data/<dataset_uri> one JSON object per line:
        multiple_choice:    {"query", "choices": [...], "gold"}
        schema:             {"context_options": [...], "continuation", "gold"}
        language_modeling:  {"context", "continuation"}

Scoring per item (each option is one row, BOS prepended, long prompts cropped from the left to the model's
``max_seq_len``; rows of many items share a forward pass, which changes no score for a causal model):
- multiple_choice / schema: the option whose continuation tokens have the lowest mean cross-entropy wins;
- language_modeling: correct iff the greedy (argmax) prediction equals every continuation token.
Few-shot examples are drawn from the same task with ``random.Random(1234 + idx)``; items are shuffled with
``random.Random(1337)`` before ``max_per_task`` subsampling. centered = (acc - 0.01 * rb) / (1 - 0.01 * rb) with rb
the random baseline in percent; CORE = mean centered accuracy over the tasks.

The model is a scorer ``model(idx: LongTensor[B, T], rows: LongTensor[N], cols: LongTensor[N]) -> log-probs
[N, V]``: the next-token log-probabilities at positions ``(rows[i], cols[i])`` only (``from_logits`` wraps a logits
model), so a served model returns the scored positions and nothing else. The losses and greedy matches are
computed here from those log-probabilities. The tokenizer is any object with ``encode(text) -> list[int]`` and
``bos_id``.
"""
from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F

TASK_TYPES = ("multiple_choice", "schema", "language_modeling")


# (idx [B, T], rows [N], cols [N]) -> next-token log-probabilities [N, V] at positions (rows[i], cols[i])
Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def from_logits(model: Callable[[torch.Tensor], torch.Tensor]) -> Scorer:
    """A scorer for an in-process model ``model(idx) -> logits [B, T, V]``."""
    return lambda idx, rows, cols: F.log_softmax(model(idx).float()[rows, cols], -1)


class TokenizerLike(Protocol):
    bos_id: int

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class CoreTask:
    label: str
    dataset_uri: str
    task_type: str
    num_fewshot: int
    continuation_delimiter: str = " "
    random_baseline: float = 0.0  # percent, as in eval_meta_data.csv


def centered(accuracy: float, random_baseline_pct: float) -> float:
    """CORE's centering: 0 at chance, 1 at perfect."""
    rb = 0.01 * random_baseline_pct
    return (accuracy - rb) / (1.0 - rb)


def load_tasks(bundle_dir: Path) -> list[CoreTask]:
    """Read ``core.yaml`` and ``eval_meta_data.csv`` of a bundle; raise with what is missing and where."""
    import yaml

    bundle_dir = Path(bundle_dir)
    cfg_path, meta_path = bundle_dir / "core.yaml", bundle_dir / "eval_meta_data.csv"
    for p in (cfg_path, meta_path):
        if not p.is_file():
            raise FileNotFoundError(f"CORE bundle {bundle_dir}: {p.name} is missing. Point the evaluator option "
                                    f"'eval_bundle' (or NANOCHAT_EVAL_BUNDLE) at an unzipped eval_bundle/ folder")
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    if "icl_tasks" not in cfg:
        raise ValueError(f"{cfg_path}: expected a top-level 'icl_tasks' list")
    baselines: dict[str, float] = {}
    with open(meta_path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            baselines[row["Eval Task"].strip()] = float(row["Random baseline"])
    tasks = []
    for t in cfg["icl_tasks"]:
        label = t["label"]
        if t["icl_task_type"] not in TASK_TYPES:
            raise ValueError(f"{cfg_path}: task {label} has icl_task_type {t['icl_task_type']!r}; "
                             f"supported: {TASK_TYPES}")
        if label not in baselines:
            raise ValueError(f"{meta_path}: no 'Random baseline' row for task {label!r}")
        shots = t.get("num_fewshot", [0])
        tasks.append(CoreTask(label=label, dataset_uri=t["dataset_uri"], task_type=t["icl_task_type"],
                              num_fewshot=int(shots[0] if isinstance(shots, list) else shots),
                              continuation_delimiter=t.get("continuation_delimiter", " "),
                              random_baseline=baselines[label]))
    return tasks


def load_items(bundle_dir: Path, task: CoreTask) -> list[dict[str, Any]]:
    path = Path(bundle_dir) / "eval_data" / task.dataset_uri
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------------------------------------------
# Prompt rendering: the few-shot block is "<example>\n\n" per shot, then the item (nanochat's templates).

def render_mc(item: dict, delim: str, shots: Sequence[dict] = ()) -> list[str]:
    prefix = "".join(f"{s['query']}{delim}{s['choices'][s['gold']]}\n\n" for s in shots)
    return [f"{prefix}{item['query']}{delim}{choice}" for choice in item["choices"]]


def render_schema(item: dict, delim: str, shots: Sequence[dict] = ()) -> list[str]:
    prefix = "".join(f"{s['context_options'][s['gold']]}{delim}{s['continuation']}\n\n" for s in shots)
    return [f"{prefix}{ctx}{delim}{item['continuation']}" for ctx in item["context_options"]]


def render_lm(item: dict, delim: str, shots: Sequence[dict] = ()) -> list[str]:
    """Two prompts: without and with the continuation (the first stripped of trailing whitespace)."""
    prefix = "".join(f"{s['context'].strip()}{delim}{s['continuation']}\n\n" for s in shots)
    without = f"{prefix}{item['context'].strip()}{delim}"
    return [without.strip(), without + item["continuation"]]


def common_length(seqs: Sequence[Sequence[int]], direction: str = "left") -> int:
    """Length of the common prefix (``left``) or suffix (``right``) of token sequences."""
    n = min(len(s) for s in seqs)
    for i in range(n):
        j = i if direction == "left" else -1 - i
        if any(s[j] != seqs[0][j] for s in seqs):
            return i
    return n


def _tokens(tok: TokenizerLike, prompts: Sequence[str]) -> list[list[int]]:
    return [[tok.bos_id] + list(tok.encode(p)) for p in prompts]


def spans(task_type: str, tokens: list[list[int]]) -> tuple[list[list[int]], list[int], list[int]] | None:
    """Token rows and the [start, end) span of what is scored in each; None when the item cannot be scored."""
    if task_type == "multiple_choice":
        start = common_length(tokens, "left")
        return tokens, [start] * len(tokens), [len(t) for t in tokens]
    if task_type == "schema":
        suffix = common_length(tokens, "right")
        return tokens, [len(t) - suffix for t in tokens], [len(t) for t in tokens]
    without, with_ = tokens
    if len(without) >= len(with_) or with_[:len(without)] != without:
        return None  # the tokenizer merged across the boundary: no clean continuation span
    return [with_], [len(without)], [len(with_)]


def prepare_item(tok: TokenizerLike, items: Sequence[dict], idx: int, task: CoreTask,
                 max_seq_len: int | None = None) -> list[tuple[list[int], int, int]] | None:
    """The token rows of one item with the [start, end) span scored in each, cropped to ``max_seq_len``."""
    item = items[idx]
    shots: list[dict] = []
    if task.num_fewshot > 0:
        rng = random.Random(1234 + idx)
        pool = [i for i in range(len(items)) if i != idx]
        shots = [items[i] for i in rng.sample(pool, min(task.num_fewshot, len(pool)))]
    render = {"multiple_choice": render_mc, "schema": render_schema, "language_modeling": render_lm}[task.task_type]
    got = spans(task.task_type, _tokens(tok, render(item, task.continuation_delimiter, shots)))
    if got is None:
        return None
    out = []
    for row, s, e in zip(*got):
        cut = max(0, len(row) - max_seq_len) if max_seq_len else 0
        if s - cut < 1:
            return None  # the scored span alone is longer than the model's context
        out.append((row[cut:], s - cut, e - cut))
    return out


@torch.no_grad()
def score_rows(model: Scorer, rows: Sequence[tuple[list[int], int, int]], pad_id: int, batch_tokens: int = 16384,
               max_scored: int | None = None) -> list[tuple[float, bool]]:
    """Per row: mean cross-entropy of the span's tokens and whether greedy decoding reproduces them all.

    Rows are batched by length (right-padded; a causal model's scores do not depend on what follows), at most
    ``batch_tokens`` tokens and ``max_scored`` scored positions per batch; the model is asked only for the
    positions that predict a span token.
    """
    out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    i = 0
    while i < len(order):
        j, scored = i + 1, rows[order[i]][2] - rows[order[i]][1]
        while j < len(order) and (j - i + 1) * len(rows[order[j]][0]) <= batch_tokens:
            span = rows[order[j]][2] - rows[order[j]][1]
            if max_scored is not None and scored + span > max_scored:
                break
            scored += span
            j += 1
        batch = order[i:j]
        width = max(len(rows[k][0]) for k in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        for r, k in enumerate(batch):
            ids[r, :len(rows[k][0])] = torch.tensor(rows[k][0], dtype=torch.long)
        # position p predicts token p + 1: the span [s, e) is predicted from positions s - 1 .. e - 2
        pos = [(r, p) for r, k in enumerate(batch) for p in range(rows[k][1] - 1, rows[k][2] - 1)]
        pr = torch.tensor([r for r, _ in pos], dtype=torch.long)
        pc = torch.tensor([p for _, p in pos], dtype=torch.long)
        logp = model(ids, pr, pc).float()
        targets = ids[pr, pc + 1]
        nll = -logp.gather(1, targets[:, None])[:, 0]
        hit = logp.argmax(-1) == targets
        at = 0
        for k in batch:
            n = rows[k][2] - rows[k][1]
            out[k] = (nll[at:at + n].mean().item(), bool(hit[at:at + n].all()))
            at += n
        i = j
    return out


def evaluate_task(model: Scorer, tok: TokenizerLike, items: Sequence[dict], task: CoreTask, max_per_task: int = -1,
                  max_seq_len: int | None = None, batch_tokens: int = 16384, max_scored: int | None = None) -> float:
    """Accuracy of ``model`` on one task (nanochat's shuffle, subsampling, few-shot draw and scoring rules)."""
    items = list(items)
    random.Random(1337).shuffle(items)
    if max_per_task > 0:
        items = items[:max_per_task]
    if not items:
        raise ValueError(f"CORE task {task.label} has no items")
    prepared = [prepare_item(tok, items, i, task, max_seq_len) for i in range(len(items))]
    flat = [row for p in prepared if p for row in p]
    scores = score_rows(model, flat, tok.bos_id, batch_tokens, max_scored)
    correct, pos = 0, 0
    for item, p in zip(items, prepared):
        if not p:
            continue  # an item that cannot be scored counts as wrong
        got = scores[pos:pos + len(p)]
        pos += len(p)
        if task.task_type == "language_modeling":
            correct += got[0][1]
        else:
            losses = [g[0] for g in got]
            correct += losses.index(min(losses)) == item["gold"]
    return correct / len(items)


def evaluate_core(model: Scorer, tok: TokenizerLike, bundle_dir: Path, max_per_task: int = -1,
                  max_seq_len: int | None = None, batch_tokens: int = 16384, max_scored: int | None = None,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``{"results": {label: acc}, "centered": {label: centered}, "core": mean centered}`` over the bundle."""
    results: dict[str, float] = {}
    centered_results: dict[str, float] = {}
    for task in load_tasks(bundle_dir):
        acc = evaluate_task(model, tok, load_items(bundle_dir, task), task, max_per_task, max_seq_len,
                            batch_tokens, max_scored)
        results[task.label] = acc
        centered_results[task.label] = centered(acc, task.random_baseline)
        if log:
            log(f"{task.label}: accuracy {acc:.4f} centered {centered_results[task.label]:.4f}")
    return {"results": results, "centered": centered_results,
            "core": sum(centered_results.values()) / len(centered_results)}
