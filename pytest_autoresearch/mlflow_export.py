"""Mirror each trial into MLflow: one experiment per task, one run per trial.

Registered only when ``--autoresearch-mlflow`` / ``autoresearch_mlflow`` names a tracking URI; MLflow itself is
imported at the first trial, so the option costs nothing until then (``pip install 'pytest-autoresearch[mlflow]'``).
"""
from __future__ import annotations

import json
import os
import warnings
from datetime import datetime
from typing import Any

import pytest

INSTALL_HINT = "pip install 'pytest-autoresearch[mlflow]' (or mlflow / mlflow-skinny)"


class MlflowExporter:
    """A pytest plugin object: implements ``pytest_autoresearch_trial_recorded``."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._client: Any = None
        self._experiments: dict[str, str] = {}

    def client(self) -> Any:
        if self._client is None:
            if self.tracking_uri.startswith("file:"):
                # The user named a folder: MLflow 3 refuses its file store unless this opt-out is set.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def experiment_id(self, task: str) -> str:
        if task not in self._experiments:
            c = self.client()
            exp = c.get_experiment_by_name(task)
            if exp is None:
                try:
                    self._experiments[task] = c.create_experiment(task)
                except Exception:  # another xdist worker created it first
                    exp = c.get_experiment_by_name(task)
                    if exp is None:
                        raise
            if task not in self._experiments:
                self._experiments[task] = exp.experiment_id
        return self._experiments[task]

    def pytest_autoresearch_trial_recorded(self, config: pytest.Config, record: dict[str, Any]) -> None:
        # A tracker that is down must not stop the research: the lineage already holds the record.
        try:
            self.export(record)
        except Exception as e:
            warnings.warn(pytest.PytestWarning(
                f"MLflow export of {record.get('task')} trial {record.get('trial')} to {self.tracking_uri} "
                f"failed: {type(e).__name__}: {e}"))

    def export(self, rec: dict[str, Any]) -> str:
        """Log ``rec`` as one finished run; returns its run id."""
        from mlflow.entities import Metric, Param, RunTag

        c = self.client()
        started, ended = _ms(rec.get("started")), _ms(rec.get("ended"))
        run = c.create_run(self.experiment_id(str(rec["task"])), start_time=started,
                           run_name=f"trial {rec['trial']}",
                           tags={"label": str(rec.get("label")), "task": str(rec["task"]),
                                 "trial": str(rec["trial"]), "commit": str(rec.get("commit") or ""),
                                 "mlflow.note.content": str(rec.get("hypothesis") or "")})
        rid = run.info.run_id
        params = {"specialist": rec.get("specialist"), "parent": rec.get("parent"), "kind": rec.get("kind"),
                  "agent": (rec.get("agent") or {}).get("name"), "variant": rec.get("variant"),
                  "device": rec.get("device"), "session": rec.get("session"), "slot": rec.get("slot")}
        metrics = {"score": rec.get("score"), "delta_pct": rec.get("delta_pct"), "train_seconds": rec.get("train_s"),
                   "eval_seconds": rec.get("eval_s")}
        # The evaluator's own scalars too (accuracy, sizes, ...), so a dashboard can chart any of them.
        for k, v in (rec.get("metrics") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                metrics.setdefault(f"eval/{k}", v)
        step_time = ended or started or 0
        c.log_batch(rid, metrics=[Metric(k, float(v), step_time, int(rec["trial"])) for k, v in metrics.items()
                                  if isinstance(v, (int, float))],
                    params=[Param(k, str(v)) for k, v in params.items() if v not in (None, "")])
        if rec.get("notes"):
            c.set_tag(rid, "notes", str(rec["notes"])[:5000])
        if rec.get("diff"):
            c.log_text(rid, rec["diff"], "diff.patch")
        c.log_text(rid, json.dumps(rec, indent=1, default=str), "record.json")
        c.set_terminated(rid, status="FINISHED", end_time=ended)
        return rid


def _ms(stamp: Any) -> int | None:
    try:
        return int(datetime.fromisoformat(str(stamp)).timestamp() * 1000)
    except (TypeError, ValueError):
        return None


def check_installed() -> None:
    """A usage error up front, not a warning per trial, when MLflow is missing (no import: find_spec only)."""
    from importlib.util import find_spec

    if find_spec("mlflow") is None:
        raise pytest.UsageError(f"--autoresearch-mlflow / autoresearch_mlflow needs MLflow: {INSTALL_HINT}")
