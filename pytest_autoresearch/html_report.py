"""One static, self-contained HTML file per task: summary, the path from the baseline to the best (each step's
hypothesis, diff and Δ), every trial filterable by specialist and label with its details on click, and the
progress plot embedded as a data URI. No external resources: it opens from disk, from a CI artifact, offline.

All agent-written text (hypotheses, notes, diffs) is escaped on the server side or set as ``textContent`` by
the page's script, which reads the trials from an embedded JSON block.
"""
from __future__ import annotations

import base64
import html
import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from .lineage import (LABELS, Lineage, Record, ancestors, best, latest_per_trial, read_jsonl,
                      recorded_objective)
from .report import fmt_score, keep_bar, shorten

HTML_NAME = "report.html"
PLOT_NAME = "progress.png"
PROMOTIONS = "promotions.jsonl"
REPLAYS = "replays.jsonl"


@dataclass
class ReportFiles:
    html: Path
    plot: Path | None
    note: str = ""

    def describe(self) -> str:
        plot = str(self.plot) if self.plot else f"no plot ({self.note})"
        return f"report: {self.html}   plot: {plot}"


def write_reports(lineage_dir: Path, records: Sequence[Record] | None = None, *, objective: Any = None,
                  source: str | None = None) -> ReportFiles:
    """Write ``progress.png`` (when matplotlib is installed) and ``report.html`` next to the lineage."""
    from . import plot

    lineage_dir = Path(lineage_dir)
    if records is None:
        records = Lineage(lineage_dir / "lineage.jsonl").records(quiet=True)
    records = list(records)
    objective = objective if objective is not None else recorded_objective(records)
    task, metric, direction = _identity(records, lineage_dir, objective)
    png: Path | None = None
    note = ""
    if not records:
        note = "no trials recorded"
    elif plot.installed():
        png = lineage_dir / PLOT_NAME
        try:
            plot.plot_progress(records, png, task=task, metric=metric, direction=direction)
        except Exception as e:  # noqa: BLE001 - a plotting library failure must not lose the report
            png, note = None, f"the plot failed: {type(e).__name__}: {e}"
    else:
        note = "matplotlib is not installed: pip install 'pytest-autoresearch[report]'"
    page = render(records, task=task, metric=metric, direction=direction, objective=objective,
                  plot_png=png.read_bytes() if png else None, plot_note=note,
                  promotions=read_jsonl(lineage_dir / PROMOTIONS), replays=read_jsonl(lineage_dir / REPLAYS),
                  source=source or str(lineage_dir / "lineage.jsonl"))
    out = lineage_dir / HTML_NAME
    tmp = out.with_name(f".{HTML_NAME}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return ReportFiles(out, png, note)


def session_reports(lineage_dir: Path, records: Sequence[Record], objective: Any = None) -> str:
    """Write both files after a session; the line to print (never raises: the session's results stand)."""
    try:
        return write_reports(lineage_dir, records, objective=objective).describe()
    except Exception as e:  # noqa: BLE001 - a full disk or an unwritable folder: say so, keep the exit status
        return f"report not written ({type(e).__name__}: {e}); write it later with: autoresearch report " \
               f"{Path(lineage_dir).name} --lineage {Path(lineage_dir).parent}"


def _identity(records: Sequence[Record], lineage_dir: Path, objective: Any) -> tuple[str, str, str]:
    first = records[0] if records else {}
    task = str(first.get("task") or lineage_dir.name)
    metric = str(getattr(objective, "metric", None) or first.get("metric") or "score")
    direction = str(getattr(objective, "direction", None) or first.get("direction") or "minimize")
    return task, metric, direction


# -- data ---------------------------------------------------------------------------------------------------
def _scalar_metrics(metrics: Any) -> dict[str, Any]:
    """Metrics worth a table row: numbers, flags, short strings and short lists of numbers."""
    out: dict[str, Any] = {}
    for k, v in (metrics or {}).items() if isinstance(metrics, dict) else ():
        if isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 200):
            out[k] = v
        elif isinstance(v, list) and len(v) <= 16 and all(isinstance(x, (int, float)) for x in v):
            out[k] = v
    return out


def trial_data(r: Record) -> dict[str, Any]:
    usage = r.get("usage") if isinstance(r.get("usage"), dict) else {}
    acc = r.get("acceptance") if isinstance(r.get("acceptance"), dict) else None
    return {
        "trial": r.get("trial"), "specialist": r.get("specialist") or "?", "label": r.get("label") or "?",
        "score": r.get("score"), "delta_pct": r.get("delta_pct"), "parent": r.get("parent"),
        "hypothesis": r.get("hypothesis") or "", "expected_delta": r.get("expected_delta"),
        "notes": r.get("notes") or "", "diff": r.get("diff") or "", "commit": r.get("commit"),
        "metrics": _scalar_metrics(r.get("metrics")), "usage": usage, "cost_usd": usage.get("cost_usd"),
        "train_s": r.get("train_s"), "eval_s": r.get("eval_s"), "started": r.get("started"), "ended": r.get("ended"),
        "agent": r.get("agent"), "kind": r.get("kind"), "best_before": r.get("best_before"),
        "acceptance": _acceptance_text(acc), "imported": r.get("imported"),
    }


def _acceptance_text(acc: dict[str, Any] | None) -> str:
    if not acc:
        return ""
    from .acceptance import Verdict

    try:
        return Verdict(**acc).describe()
    except TypeError:
        return json.dumps(acc)


def path_to_best(records: Sequence[Record], direction: str) -> list[Record]:
    """Baseline -> ... -> best, following parents."""
    recs = latest_per_trial(records)
    b = best(recs, direction)
    if b is None:
        return []
    return [*reversed(ancestors(recs, b["trial"])), b]


def summary(records: Sequence[Record], direction: str, objective: Any = None) -> dict[str, Any]:
    recs = latest_per_trial(records)
    base = next((r for r in recs if r.get("trial") == 0), None)
    b = best(recs, direction)
    trials = [r for r in recs if r.get("trial") != 0]
    labels = Counter(str(r.get("label")) for r in trials)
    cost = sum(float((r.get("usage") or {}).get("cost_usd") or 0.0) for r in recs if isinstance(r.get("usage"), dict))
    starts = sorted(str(r["started"]) for r in recs if r.get("started"))
    ends = sorted(str(r["ended"]) for r in recs if r.get("ended"))
    gain = None
    if base and b and isinstance(base.get("score"), (int, float)) and base["score"]:
        gain = 100.0 * (b["score"] - base["score"]) / abs(base["score"])
    return {
        "baseline": base.get("score") if base else None, "best": b.get("score") if b else None,
        "best_trial": b.get("trial") if b else None, "best_specialist": b.get("specialist") if b else None,
        "best_hypothesis": b.get("hypothesis") if b else None, "delta_pct": gain, "trials": len(trials),
        "labels": dict(labels), "keeps": labels.get("keep", 0), "cost_usd": cost,
        "first_started": starts[0] if starts else None, "last_ended": ends[-1] if ends else None,
        "keep_bar": keep_bar(list(recs), objective) if objective is not None and recs else None,
        "specialists": sorted({str(r.get("specialist")) for r in trials}),
    }


# -- page ---------------------------------------------------------------------------------------------------
def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _pct(v: Any) -> str:
    return f"{v:+.2f}%" if isinstance(v, (int, float)) else "-"


def diff_html(diff: str) -> str:
    """A unified diff as escaped lines, coloured by kind."""
    out = []
    for line in (diff or "").splitlines():
        cls = ("meta" if line.startswith(("diff --git", "index ", "--- ", "+++ ")) else "hunk" if line.startswith("@@")
               else "add" if line.startswith("+") else "del" if line.startswith("-") else "ctx")
        out.append(f'<span class="{cls}">{_e(line)}</span>')
    return "\n".join(out) or '<span class="ctx">(no change)</span>'


def _json_script(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False, default=str)
    # Inside <script>, "</" could close the element: escape the characters HTML treats specially.
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render(records: Sequence[Record], *, task: str, metric: str, direction: str, objective: Any = None,
           plot_png: bytes | None = None, plot_note: str = "", promotions: Sequence[dict[str, Any]] = (),
           replays: Sequence[dict[str, Any]] = (), source: str = "") -> str:
    recs = latest_per_trial(records)
    s = summary(recs, direction, objective)
    path = path_to_best(recs, direction)
    by = {r["trial"]: r for r in recs}
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = [
        ("baseline", fmt_score(s["baseline"])),
        ("best", f"{fmt_score(s['best'])} (trial {s['best_trial']}, {s['best_specialist']})" if s["best"] is not None
         else "-"),
        ("Δ vs baseline", _pct(s["delta_pct"])),
        ("trials", f"{s['trials']} after the baseline, {s['keeps']} kept"),
        ("keep bar now", s["keep_bar"] or "-"),
        ("agent cost", f"${s['cost_usd']:.4f}" if s["cost_usd"] else "-"),
        ("ran", f"{s['first_started'] or '?'} → {s['last_ended'] or '?'}"),
    ]
    summary_rows = "\n".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    label_rows = "\n".join(f'<tr><td><span class="lab lab-{_e(k)}">{_e(k)}</span></td><td>{n}</td></tr>'
                           for k, n in sorted(s["labels"].items(), key=lambda kv: _label_order(kv[0])))
    spec_rows = []
    for name in s["specialists"]:
        rs = [r for r in recs if str(r.get("specialist")) == name and r.get("trial") != 0]
        keeps = [r for r in rs if r.get("label") == "keep"]
        fails = sum(1 for r in rs if r.get("label") not in ("keep", "discard"))
        cost = sum(float((r.get("usage") or {}).get("cost_usd") or 0.0) for r in rs if isinstance(r.get("usage"), dict))
        spec_rows.append(f"<tr><td>{_e(name)}</td><td>{len(rs)}</td><td>{len(keeps)}</td>"
                         f"<td>{sum(1 for r in rs if r.get('label') == 'discard')}</td><td>{fails}</td>"
                         f"<td>{_e(f'${cost:.4f}' if cost else '-')}</td></tr>")
    steps = []
    for r in path:
        parent = by.get(r.get("parent")) if r.get("parent") is not None else None
        d = None
        if parent and isinstance(parent.get("score"), (int, float)) and isinstance(r.get("score"), (int, float)) \
                and parent["score"]:
            d = 100.0 * (r["score"] - parent["score"]) / abs(parent["score"])
        steps.append(
            f'<li class="step" data-trial="{_e(r["trial"])}"><div class="stephead"><a href="#" class="open" '
            f'data-trial="{_e(r["trial"])}">trial {_e(r["trial"])}</a> <span class="spec">[{_e(r.get("specialist"))}]'
            f'</span> <span class="lab lab-{_e(r.get("label"))}">{_e(r.get("label"))}</span> {_e(metric)}='
            f'{_e(fmt_score(r.get("score")))} <span class="delta">Δ vs parent {_e(_pct(d))}</span></div>'
            f'<div class="hyp">{_e(r.get("hypothesis"))}</div>'
            + (f'<details class="stepdiff"><summary>diff</summary><pre class="diff">{diff_html(r.get("diff") or "")}'
               f'</pre></details>' if r.get("diff") else "") + "</li>")
    trial_rows = []
    for r in recs:
        trial_rows.append(
            f'<tr class="trial" data-trial="{_e(r["trial"])}" data-specialist="{_e(r.get("specialist") or "?")}" '
            f'data-label="{_e(r.get("label") or "?")}"><td>{_e(r["trial"])}</td><td>{_e(r.get("specialist"))}</td>'
            f'<td><span class="lab lab-{_e(r.get("label"))}">{_e(r.get("label"))}</span></td>'
            f'<td class="num">{_e(fmt_score(r.get("score")))}</td><td class="num">{_e(_pct(r.get("delta_pct")))}</td>'
            f'<td>{_e(r.get("parent") if r.get("parent") is not None else "-")}</td>'
            f'<td class="hyp">{_e(shorten(r.get("hypothesis"), 140))}</td></tr>')
    specs = sorted({str(r.get("specialist") or "?") for r in recs})
    labels = sorted({str(r.get("label") or "?") for r in recs}, key=_label_order)
    opts_spec = "".join(f'<option value="{_e(x)}">{_e(x)}</option>' for x in specs)
    opts_label = "".join(f'<option value="{_e(x)}">{_e(x)}</option>' for x in labels)
    plot_html = (f'<img id="plot" alt="progress plot of {_e(task)}" src="data:image/png;base64,'
                 f'{base64.b64encode(plot_png).decode("ascii")}">' if plot_png
                 else f'<p id="plot-missing">{_e(plot_note or "no plot")}</p>')
    promo_html = ""
    if promotions:
        items = "".join(f"<li>trial {_e(p.get('trial'))} ({_e(fmt_score(p.get('score')))}) promoted to "
                        f"<code>{_e(p.get('recipe'))}</code> at {_e(p.get('promoted'))}</li>" for p in promotions)
        promo_html = f'<section id="promotions"><h2>Promotions</h2><ul>{items}</ul></section>'
    if replays:
        # A replay that did not reproduce is the one a reader must not miss: bold and red.
        items = "".join(
            f'<li class="{"reproduced" if p.get("reproduced") else "not-reproduced"}">trial {_e(p.get("trial"))} '
            f'{"reproduced" if p.get("reproduced") else "<strong>NOT reproduced</strong>"} at '
            f'{_e(p.get("replayed"))}: {_e(fmt_score(p.get("score")))} vs {_e(fmt_score(p.get("recorded_score")))} '
            f'recorded ({_e(p.get("device"))}; {_e(p.get("budget"))})</li>' for p in replays)
        promo_html += f'<section id="replays"><h2>Replays</h2><ul>{items}</ul></section>'
    data = {"task": task, "metric": metric, "direction": direction, "generated": generated, "source": source,
            "summary": s, "path": [r["trial"] for r in path], "trials": [trial_data(r) for r in recs],
            "promotions": list(promotions), "replays": list(replays)}
    return PAGE.format(
        title=_e(f"{task}: autoresearch report"), task=_e(task), metric=_e(metric), direction=_e(direction),
        generated=_e(generated), source=_e(source), summary_rows=summary_rows, label_rows=label_rows,
        spec_rows="\n".join(spec_rows), plot=plot_html, steps="\n".join(steps) or "<li>no legal trial yet</li>",
        trial_rows="\n".join(trial_rows), opts_spec=opts_spec, opts_label=opts_label, n_trials=len(recs),
        promotions=promo_html, data=_json_script(data), css=CSS, js=JS)


def _label_order(label: str) -> int:
    return LABELS.index(label) if label in LABELS else len(LABELS)


CSS = """
#replays .not-reproduced{color:#b91c1c}
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{padding:16px 24px;background:#1f2937;color:#fff}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#cbd5e1;font-size:12px}main{display:flex;gap:16px;padding:16px 24px;align-items:flex-start}
#left{flex:3;min-width:0}#details{flex:2;position:sticky;top:12px;max-height:95vh;overflow:auto;background:#fff;
border:1px solid #ddd;border-radius:6px;padding:12px}section{background:#fff;border:1px solid #ddd;border-radius:6px;
padding:12px 16px;margin-bottom:16px}h2{font-size:16px;margin:0 0 8px}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eee;vertical-align:top}td.num{text-align:right;
font-variant-numeric:tabular-nums}.cols{display:flex;gap:16px}.cols>div{flex:1}#plot{max-width:100%}
tr.trial{cursor:pointer}tr.trial:hover{background:#f1f5f9}tr.trial.selected{background:#e0f2fe}
.lab{padding:1px 6px;border-radius:8px;font-size:12px;background:#e5e7eb}.lab-keep{background:#bbf7d0}
.lab-baseline{background:#ddd6fe}.lab-discard{background:#e5e7eb}.lab-gate_miss,.lab-size_blocked{background:#fde68a}
.lab-crash,.lab-budget_overrun,.lab-evaluator_error,.lab-harness_error{background:#fecaca}
.lab-preflight_crash,.lab-surface_violation{background:#fed7aa}pre.diff{background:#0f172a;color:#e2e8f0;padding:8px;
overflow:auto;font-size:12px;border-radius:4px}pre.diff .add{color:#86efac}pre.diff .del{color:#fca5a5}
pre.diff .hunk{color:#93c5fd}pre.diff .meta{color:#94a3b8}.hyp{color:#374151}ol#path li{margin-bottom:8px}
.filters{display:flex;gap:8px;align-items:center;margin-bottom:8px;flex-wrap:wrap}.muted{color:#6b7280}
#details dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 10px;margin:0}#details dt{font-weight:600}
#details dd{margin:0;word-break:break-word}#summary-table th{white-space:nowrap}td.hyp{overflow-wrap:anywhere}
#trials-section{overflow-x:auto}
"""

JS = """
const DATA = JSON.parse(document.getElementById('report-data').textContent);
const BY = new Map(DATA.trials.map(t => [t.trial, t]));
function fmt(v) { return (typeof v === 'number') ? Number(v.toPrecision(6)).toString() : (v === null || v === undefined ? '-' : String(v)); }
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function diffPre(diff) {
  const pre = el('pre', {class: 'diff', id: 'detail-diff'});
  if (!diff) { pre.textContent = '(no change)'; return pre; }
  for (const line of diff.split('\\n')) {
    let cls = 'ctx';
    if (/^(diff --git|index |--- |\\+\\+\\+ )/.test(line)) cls = 'meta';
    else if (line.startsWith('@@')) cls = 'hunk';
    else if (line.startsWith('+')) cls = 'add';
    else if (line.startsWith('-')) cls = 'del';
    pre.appendChild(el('span', {class: cls}, line));
    pre.appendChild(document.createTextNode('\\n'));
  }
  return pre;
}
function showTrial(n) {
  const t = BY.get(n);
  if (!t) return;
  document.querySelectorAll('tr.trial.selected').forEach(r => r.classList.remove('selected'));
  const row = document.querySelector('tr.trial[data-trial="' + n + '"]');
  if (row) row.classList.add('selected');
  const box = document.getElementById('details');
  box.replaceChildren();
  box.appendChild(el('h2', {id: 'detail-title'}, 'Trial ' + t.trial + ' [' + t.specialist + '] ' + t.label));
  const dl = el('dl');
  const add = (k, v, id) => { dl.appendChild(el('dt', {}, k)); const dd = el('dd', id ? {id: id} : {}, fmt(v)); dl.appendChild(dd); return dd; };
  add(DATA.metric, t.score, 'detail-score');
  add('Δ vs best before', t.delta_pct === null || t.delta_pct === undefined ? '-' : (t.delta_pct >= 0 ? '+' : '') + t.delta_pct.toFixed(2) + '%');
  const p = add('parent', t.parent);
  if (BY.has(t.parent)) { p.replaceChildren(); const a = el('a', {href: '#', id: 'detail-parent'}, 'trial ' + t.parent); a.onclick = e => { e.preventDefault(); showTrial(t.parent); }; p.appendChild(a); }
  add('hypothesis', t.hypothesis, 'detail-hypothesis');
  if (t.expected_delta !== null && t.expected_delta !== undefined) add('expected Δ', t.expected_delta);
  if (t.acceptance) add('keep rule', t.acceptance);
  if (t.notes) add('notes', t.notes, 'detail-notes');
  add('train / eval s', fmt(t.train_s) + ' / ' + fmt(t.eval_s));
  if (t.agent) add('agent', (t.agent.name || '') + (t.agent.model ? ' (' + t.agent.model + ')' : ''));
  const u = t.usage || {};
  if (Object.keys(u).length) add('cost', (u.cost_usd !== undefined ? '$' + Number(u.cost_usd || 0).toFixed(4) : '-') + ', tokens in ' + fmt(u.input_tokens) + ' / out ' + fmt(u.output_tokens), 'detail-cost');
  if (t.commit) add('commit', t.commit);
  if (t.imported) add('imported from', (t.imported.source || '') + ' (' + (t.imported.layout || '') + ')');
  box.appendChild(dl);
  const keys = Object.keys(t.metrics || {});
  if (keys.length) {
    box.appendChild(el('h3', {}, 'metrics'));
    const tbl = el('table', {id: 'detail-metrics'});
    for (const k of keys) { const tr = el('tr'); tr.appendChild(el('td', {}, k)); tr.appendChild(el('td', {class: 'num'}, Array.isArray(t.metrics[k]) ? t.metrics[k].map(fmt).join(', ') : fmt(t.metrics[k]))); tbl.appendChild(tr); }
    box.appendChild(tbl);
  }
  box.appendChild(el('h3', {}, 'diff'));
  box.appendChild(diffPre(t.diff));
}
function applyFilters() {
  const spec = document.getElementById('filter-specialist').value;
  const lab = document.getElementById('filter-label').value;
  const text = document.getElementById('filter-text').value.toLowerCase();
  let shown = 0;
  document.querySelectorAll('tr.trial').forEach(r => {
    const t = BY.get(Number(r.dataset.trial));
    const ok = (!spec || r.dataset.specialist === spec) && (!lab || r.dataset.label === lab) &&
               (!text || (t && (t.hypothesis + ' ' + t.notes).toLowerCase().includes(text)));
    r.hidden = !ok;
    if (ok) shown++;
  });
  document.getElementById('shown-count').textContent = shown + ' of ' + DATA.trials.length + ' trials';
}
document.querySelectorAll('tr.trial').forEach(r => r.addEventListener('click', () => showTrial(Number(r.dataset.trial))));
document.querySelectorAll('a.open').forEach(a => a.addEventListener('click', e => { e.preventDefault(); showTrial(Number(a.dataset.trial)); }));
['filter-specialist', 'filter-label'].forEach(id => document.getElementById(id).addEventListener('change', applyFilters));
document.getElementById('filter-text').addEventListener('input', applyFilters);
applyFilters();
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body>
<header><h1 id="task">{task}: {direction} {metric}</h1>
<p>pytest-autoresearch report · generated {generated} · from <code>{source}</code></p></header>
<main><div id="left">
<section id="summary"><h2>Summary</h2><div class="cols">
<div><table id="summary-table">{summary_rows}</table></div>
<div><table id="labels-table"><tr><th>label</th><th>trials</th></tr>{label_rows}</table></div></div>
<h2 style="margin-top:12px">Specialists</h2>
<table id="specialists-table"><tr><th>specialist</th><th>trials</th><th>keep</th><th>discard</th><th>failed</th>
<th>cost</th></tr>{spec_rows}</table></section>
{promotions}
<section id="progress"><h2>Progress</h2>{plot}</section>
<section id="path-section"><h2>Path from the baseline to the best</h2><ol id="path">{steps}</ol></section>
<section id="trials-section"><h2>All trials</h2>
<div class="filters"><label>specialist <select id="filter-specialist"><option value="">all</option>{opts_spec}</select></label>
<label>label <select id="filter-label"><option value="">all</option>{opts_label}</select></label>
<input id="filter-text" type="search" placeholder="search hypotheses and notes">
<span id="shown-count" class="muted">{n_trials} trials</span></div>
<table id="trials"><thead><tr><th>trial</th><th>specialist</th><th>label</th><th>score</th><th>Δ</th><th>parent</th>
<th>hypothesis</th></tr></thead><tbody>{trial_rows}</tbody></table></section>
</div>
<aside id="details"><p class="muted">Click a trial for its hypothesis, metrics, cost, notes and diff.</p></aside>
</main>
<script id="report-data" type="application/json">{data}</script>
<script>{js}</script>
</body></html>
"""
