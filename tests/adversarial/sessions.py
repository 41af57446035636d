"""Runs the attack groups as real pytest sessions on the vault (used by the tests and benchmarks/trust.py)."""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from attacks import ALL, Attack
from vault import MARKER, write_vault

GROUPS: dict[str, dict[str, Any]] = {
    "mse": dict(overrides=()),
    "time": dict(overrides=()),
    "res": dict(train_seconds=6, predict_seconds=4,
                overrides=("sandbox.memory_bytes=2147483648", "sandbox.tmp_bytes=67108864",
                           "sandbox.file_bytes=33554432", "sandbox.log_bytes=1048576")),
    "lm": dict(eval_seconds=25, overrides=()),
}
MODE = {"mse": "mse", "time": "time", "res": "mse", "lm": "lm"}


class Listener:
    """A loopback TCP server that counts connections (none may come from a sandbox)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stop = True
        self.thread.join(2)
        self.sock.close()


def _labels_copy(root: Path) -> Path:
    """The vault's held-out labels, as a copy inside a 'package' folder the sandbox shows (like scikit-learn's
    bundled digits): the task hides the file, so the attack that loads it must find nothing."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=24)
    rng.normal(size=(2000, 24))
    xt = rng.normal(size=(400, 24))
    rng.normal(size=2000)
    y_held_out = xt @ w + rng.normal(size=400) * 0.5
    path = root / "pkgdata" / "leak" / "labels_copy.npy"
    path.parent.mkdir(parents=True)
    np.save(path, y_held_out)
    return path


class Session:
    """What one group's pytest session left: records, per-trial evidence, output, the key it carried."""

    def __init__(self, root: Path, group: str, attacks: list[Attack], proc: subprocess.CompletedProcess,
                 key: str, listener: Listener) -> None:
        self.root, self.group, self.attacks, self.proc, self.key = root, group, attacks, proc, key
        self.listener = listener
        self.lineage = root / ".autoresearch" / "vault"
        path = self.lineage / "lineage.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        self.records: dict[int, dict[str, Any]] = {}
        for line in lines:
            try:
                r = json.loads(line)
                self.records[r["trial"]] = r
            except (ValueError, KeyError, TypeError):
                continue
        self.n_lines = len(lines)
        ev = root / "evidence.jsonl"
        self.evidence = {e["trial"]: e for e in map(json.loads, ev.read_text().splitlines())} if ev.exists() else {}
        self.output = proc.stdout + proc.stderr

    def trial_of(self, attack: Attack) -> int:
        return self.attacks.index(attack) + 1

    def verdict(self, attack: Attack) -> dict[str, Any]:
        """Per attack: was it labelled as expected, did the score and lineage stay as they were, did a
        process outlive the trial, did the key leak, did its probe reach anything."""
        trial = self.trial_of(attack)
        rec = self.records.get(trial)
        ev = self.evidence.get(trial, {})
        legal = [r["trial"] for t, r in self.records.items() if t <= trial and r.get("label") in ("baseline", "keep")]
        reached: list[Any] = []
        for probe in attack.probes:
            for path in self.probe_files(trial, probe):
                reached += json.loads(path.read_text())["found"]
        return {
            "recorded": rec is not None,
            "label": rec and rec.get("label"),
            "labelled_right": rec is not None and rec.get("label") in attack.expect,
            "score_unchanged": rec is not None and rec.get("label") != "keep",  # this attack earned nothing
            "best_is_baseline": legal == [0],  # and nothing before it did either
            "lineage_unchanged": bool(ev.get("grew_by_one")),
            "orphans": len(ev.get("procs", [])),
            "leaks": len(ev.get("key_hits", [])),
            "reached": reached,
        }

    def probe_files(self, trial: int, probe: str) -> list[Path]:
        if probe.startswith("cache:"):
            path = self.lineage / "cache" / probe.split(":", 1)[1]
            return [path] if path.exists() else []
        return sorted((self.lineage / "trials" / f"{trial:05d}" / "out").glob("seed-*/probe.json"))


def run_group(group: str, root: Path) -> Session:
    """One pytest session on a fresh vault in ``root``: every attack of ``group``, one trial each.

    Always sandboxed: without the sandbox these attacks reach the whole machine (they hunt for evaluators,
    lineages and git repositories from ``/`` and rewrite what they find)."""
    conf = GROUPS[group]
    attacks = [a for a in ALL if a.group == group]
    listener = Listener()
    copy = _labels_copy(root)
    marker = MARKER + group.upper()  # one per group: groups may run side by side
    fmt = dict(port=listener.port, marker=marker, hidden_copy=str(copy))
    write_vault(root, MODE[group], [a.payload(**fmt) for a in attacks], hidden=(str(copy),),
                marker=marker, **{k: v for k, v in conf.items() if k != "overrides"})
    key = "sk-ant-vault-" + secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env.update(ANTHROPIC_API_KEY=key, VAULT_ATTACKS=str(root / "attacks.json"),
               VAULT_EVIDENCE=str(root / "evidence.jsonl"), PYTHONDONTWRITEBYTECODE="1")
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tasks/vault",
            "--autoresearch-trials", str(len(attacks)), "--autoresearch-agent", "attacker",
            "--autoresearch-override", "lineage.keep_outputs=true",
            "--autoresearch-override", f"sandbox.extra_ro_binds=[{root / 'pkgdata'}]"]
    for o in conf["overrides"]:
        args += ["--autoresearch-override", o]
    args += ["--autoresearch-override", "sandbox.mode=bwrap"]
    try:
        proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    finally:
        listener.close()
        _kill_marked(marker)
    return Session(root, group, attacks, proc, key, listener)


def _kill_marked(marker: str) -> None:
    """Processes an attack left behind (none should be) are killed once counted."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    os.kill(int(d.name), 9)
            except OSError:
                pass


