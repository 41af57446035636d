"""The ``autoresearch`` subcommands that work on a recorded lineage::

    autoresearch show    <task> TRIAL|best     one trial: hypothesis, label, metrics, cost, notes, ancestry, diff
    autoresearch promote <task> [TRIAL|best]   write its recipe into the task's recipe folder (and re-measure
                                               the task's reference.json, when it has one)
    autoresearch replay  <task> TRIAL          run its commit again under the lineage's budget and compare
    autoresearch audit   <task>                which files and regions each trial touched vs its surface
    autoresearch report  <task>                (re)write progress.png and report.html next to the lineage
    autoresearch import  FILE                  a results.tsv (karpathy/autoresearch or trajectory layout) as a
                                               lineage view with its plot and report

``--lineage DIR`` is the folder given to ``--autoresearch-lineage`` (default ``.autoresearch``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Callable

COMMANDS = ("show", "promote", "replay", "audit", "report", "import")


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def _lineage_dir(args: argparse.Namespace) -> Path:
    d = Path(args.lineage) / args.task
    if not (d / "lineage.jsonl").is_file():
        raise CommandError(f"no lineage at {d / 'lineage.jsonl'}: pass --lineage DIR (the folder given to "
                           f"--autoresearch-lineage; default .autoresearch)")
    return d


def _common(p: argparse.ArgumentParser, task: bool = True) -> None:
    if task:
        p.add_argument("task", help="the task's name (its folder under the lineage folder)")
    p.add_argument("--lineage", default=".autoresearch", metavar="DIR",
                   help="the folder given to --autoresearch-lineage (default: .autoresearch)")


def cmd_show(args: argparse.Namespace) -> int:
    from .lineage import Lineage
    from .promote import PromoteError, pick
    from .show import show

    d = _lineage_dir(args)
    try:
        trial = int(pick(Lineage(d / "lineage.jsonl").records(), args.trial)["trial"])
    except PromoteError as e:
        raise CommandError(str(e)) from None
    print(show(d, trial))
    return 0


def _module(args: argparse.Namespace, info: dict | None) -> Path:
    if info and info.get("module") and Path(info["module"]).is_file():
        return Path(info["module"])
    guess = Path(args.tasks_dir) / args.task / f"test_{args.task}.py"
    if guess.is_file():
        return guess
    raise CommandError(f"cannot find the task module of {args.task}: task.json names none that exists and "
                       f"{guess} is missing; pass --tasks-dir DIR")


def cmd_promote(args: argparse.Namespace) -> int:
    from .promote import PromoteError, promote, record, remeasure
    from .reference import FILE_NAME
    from .taskinfo import read as read_info

    d = _lineage_dir(args)
    info = read_info(d)
    try:
        p = promote(d, args.trial, recipe=Path(args.recipe) if args.recipe else None, force=args.force)
    except PromoteError as e:
        raise CommandError(str(e)) from None
    if not p.changed:
        print(f"autoresearch promote: {p.recipe} already holds trial {p.trial}'s recipe; nothing changed")
    else:
        print(p.diff, end="" if p.diff.endswith("\n") else "\n")
        print(f"autoresearch promote: wrote trial {p.trial}'s recipe into {p.recipe} ({len(p.changed)} file(s): "
              f"{', '.join(p.changed)}); review and commit it with your project's git")
    rc = 0
    module = None
    try:
        module = _module(args, info)
    except CommandError:
        pass
    ref = module.parent / FILE_NAME if module else None
    if args.no_remeasure or module is None or not (args.update_reference or (ref is not None and ref.is_file())):
        p.record["reference"] = None
    else:
        status = remeasure(module, (info or {}).get("variant"))
        p.record["reference"] = {"path": str(ref), "updated": status == 0, "pytest_exit": status}
        if status != 0:
            print(f"autoresearch promote: re-measuring the promoted recipe failed (pytest exit {status}); {ref} "
                  f"was not rewritten", file=sys.stderr)
            rc = 1
        else:
            print(f"autoresearch promote: {ref} now holds the promoted recipe's measurement")
    record(d, p.record)
    print(f"autoresearch promote: recorded in {d / 'promotions.jsonl'}")
    _refresh_report(d, "promote")
    return rc


def _refresh_report(d: Path, who: str) -> None:
    """A report already written next to the lineage shows what a command just recorded, not an older state."""
    from .html_report import HTML_NAME, write_reports

    if (d / HTML_NAME).is_file():
        print(f"autoresearch {who}: {write_reports(d).describe()}")


def cmd_replay(args: argparse.Namespace) -> int:
    from .lineage import Lineage
    from .promote import PromoteError, pick
    from .replay import read as read_replays
    from .taskinfo import read as read_info

    d = _lineage_dir(args)
    try:
        rec = pick(Lineage(d / "lineage.jsonl").records(), args.trial)
    except PromoteError as e:
        raise CommandError(str(e)) from None
    module = _module(args, read_info(d))
    before = len(read_replays(d))
    cmd = [sys.executable, "-m", "pytest", str(module), "-p", "no:cacheprovider", "-q",
           "--autoresearch-lineage", str(d.parent), "--autoresearch-replay", str(rec["trial"])]
    if rec.get("variant"):
        cmd += ["--autoresearch-override", f"variant={rec['variant']}"]
    print("autoresearch replay:", " ".join(cmd), flush=True)
    status = subprocess.call(cmd + list(args.pytest_args))
    new = [r for r in read_replays(d)[before:] if r.get("trial") == rec["trial"]]
    if not new:
        print(f"autoresearch replay: trial {rec['trial']} was not replayed (pytest exit {status})", file=sys.stderr)
        return status or 2
    ok = bool(new[-1].get("reproduced"))
    print(f"autoresearch replay: trial {rec['trial']} {'reproduced' if ok else 'NOT reproduced'} "
          f"(recorded in {d / 'replays.jsonl'})")
    _refresh_report(d, "replay")
    return 0 if ok else 1


def cmd_audit(args: argparse.Namespace) -> int:
    import json

    from .audit import audit

    rep = audit(_lineage_dir(args))
    print(json.dumps(rep.to_json(), indent=2, default=str) if args.json else rep.render())
    return 1 if rep.out_of_surface else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .html_report import write_reports

    print(write_reports(_lineage_dir(args)).describe())
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .html_report import write_reports
    from .results_import import ResultsFormatError, read_tsv, write_view

    try:
        records = read_tsv(Path(args.file), args.layout, task=args.name, metric=args.metric,
                           direction=args.direction)
        folder = Path(args.lineage) / records[0]["task"]
        path = write_view(records, folder)
    except ResultsFormatError as e:
        raise CommandError(str(e)) from None
    layout = records[0]["imported"]["layout"]
    print(f"autoresearch import: {len(records)} runs of {args.file} ({layout} layout) -> {path}")
    print(write_reports(folder, records, source=str(Path(args.file).resolve())).describe())
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="autoresearch", description="Work with a recorded lineage.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("show", help="one trial: hypothesis, label, metrics, notes, ancestry, diff")
    _common(p)
    p.add_argument("trial", help="a trial number, or 'best'")
    p = sub.add_parser("promote", help="write a trial's recipe into the task's recipe folder")
    _common(p)
    p.add_argument("trial", nargs="?", default="best", help="a trial number, or 'best' (default)")
    p.add_argument("--recipe", metavar="DIR", help="the recipe folder to write (default: the one task.json names)")
    p.add_argument("--tasks-dir", default="tasks", help="where task folders are, if task.json names no module")
    p.add_argument("--force", action="store_true", help="promote a failed trial, or overwrite unrecorded changes")
    p.add_argument("--no-remeasure", action="store_true", help="do not re-measure the task's reference.json")
    p.add_argument("--update-reference", action="store_true",
                   help="re-measure and write reference.json even when the task has none yet")
    p = sub.add_parser("replay", help="run a trial's commit again under the lineage's budget and compare")
    _common(p)
    p.add_argument("trial", help="a trial number, or 'best'")
    p.add_argument("--tasks-dir", default="tasks", help="where task folders are, if task.json names no module")
    p.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    p = sub.add_parser("audit", help="which files and regions each trial touched, against its specialist's surface")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the audit as JSON")
    p = sub.add_parser("report", help="write progress.png and report.html next to the lineage")
    _common(p)
    p = sub.add_parser("import", help="read a results.tsv into a lineage view with its plot and report")
    p.add_argument("file", help="the results.tsv")
    _common(p, task=False)
    p.add_argument("--layout", default="auto", choices=("auto", "karpathy", "trajectory"))
    p.add_argument("--name", help="the view's name (its folder under --lineage; default imported-<file stem>)")
    p.add_argument("--metric", help="the column to score by (karpathy: val_bpb; trajectory: score)")
    p.add_argument("--direction", choices=("minimize", "maximize"), help="default: minimize")
    return ap


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "show": cmd_show, "promote": cmd_promote, "replay": cmd_replay, "audit": cmd_audit, "report": cmd_report,
    "import": cmd_import}


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        return HANDLERS[args.command](args)
    except CommandError as e:
        print(f"autoresearch {args.command}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader stopped early (| head): not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
