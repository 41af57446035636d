"""A causality probe that hides among the scoring batches of a sequence model.

A model scored on next-token predictions must not read a token before predicting it. A probe with its own
inputs and shapes can be recognised, and a model could behave only there. ``CausalProbe`` instead takes a
few of the real scoring batches, chosen with randomness the recipe cannot predict, and sends a twin of each
(same B x T) to ``twin``: some rows, each picked with probability 1/2, get every token after a random
position ``p`` replaced (the whole row half the time, so a row that reads the next row's first token, its
stream's continuation, shows too); at least one row stays as it was. The outputs of the untouched rows must
equal the real batch's (else the model reads across rows, or carries state between batches), and so must
those of a changed row at positions <= p (else it reads ahead).

``twin`` should be a second model server, one that never sees the real batches: in one process, a model
could remember a batch and answer its twin with copies of the real outputs, hiding any lookahead.

    probe = CausalProbe(lambda x: twin_server.call("log_probs", x), n_batches=len(batches), vocab_size=V)
    for i, x in enumerate(batches):
        out = server.call("log_probs", x)      # float[B, T, ...]
        probe.check(i, x, out)
    metrics["causal"], metrics["causal_reason"] = probe.ok, probe.reason
"""
from __future__ import annotations

import secrets
from typing import Any, Callable

import numpy as np


def unpredictable_rng(seed: int = 0) -> np.random.Generator:
    """The OS's randomness (which a recipe cannot predict), mixed with ``seed`` so seeds differ."""
    return np.random.default_rng([int(seed) & (2 ** 63 - 1), secrets.randbits(128)])


def _array(out: Any) -> np.ndarray:
    if hasattr(out, "detach"):  # a torch tensor, on any device
        out = out.detach().float().cpu().numpy()
    return np.asarray(out, dtype=np.float64)


class CausalProbe:
    """Checks ``probes`` of ``n_batches`` scoring batches for lookahead (see the module docstring)."""

    def __init__(self, twin: Callable[[np.ndarray], Any], n_batches: int, vocab_size: int, *, probes: int = 4,
                 tol: float = 1e-4, rng: np.random.Generator | None = None) -> None:
        self.twin, self.vocab_size, self.tol = twin, int(vocab_size), tol
        self.rng = rng if rng is not None else unpredictable_rng()
        k = min(max(int(probes), 0), n_batches)
        self.chosen = {int(i) for i in self.rng.choice(n_batches, size=k, replace=False)} if k else set()
        self.checked, self.max_leak, self.reason = 0, 0.0, ""

    @property
    def ok(self) -> bool:
        return not self.reason

    def perturb(self, x: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
        """A twin of ``x`` and, for each changed row, the last position that kept its token (-1: none)."""
        b, t = x.shape
        rows = [r for r in range(b) if self.rng.random() < 0.5] or [int(self.rng.integers(b))]
        if len(rows) == b and b > 1:
            rows.remove(int(self.rng.choice(rows)))
        twin, cut = np.array(x, copy=True), {}
        for r in rows:
            # A whole-row change checks only the other rows: a row alone in its batch always keeps a prefix.
            p = -1 if b > 1 and (t < 2 or self.rng.random() < 0.5) else int(self.rng.integers(0, t - 1))
            shift = self.rng.integers(1, self.vocab_size, size=t - p - 1)
            twin[r, p + 1:] = (x[r, p + 1:] + shift) % self.vocab_size  # every replaced token differs
            cut[r] = p
        return twin, cut

    def check(self, index: int, x: np.ndarray, out: Any) -> None:
        """If batch ``index`` was chosen, send its twin and compare with ``out``, the real batch's answer."""
        x = np.asarray(x)
        if index not in self.chosen or x.ndim != 2 or self.vocab_size < 2 or (x.shape[1] < 2 and x.shape[0] < 2):
            return
        b, t = x.shape
        twin_x, cut = self.perturb(x)
        real, other = _array(out), _array(self.twin(twin_x))
        self.checked += 1
        if real.shape != other.shape or real.shape[:2] != (b, t):
            self.reason = self.reason or (f"the twin's answer has shape {other.shape}, the real batch's "
                                          f"{real.shape}, for an input of {(b, t)}")
            return
        # Equal infinities (a token ruled out in both) and NaN in both are no change; any other NaN is.
        with np.errstate(invalid="ignore"):
            same = (real == other) | (np.isnan(real) & np.isnan(other))
            diff = np.where(same, 0.0, np.abs(real - other))
        diff = np.nan_to_num(diff, nan=np.inf).reshape(b, t, -1).max(-1)  # worst change per position
        kept = [r for r in range(b) if r not in cut]
        across = float(diff[kept].max()) if kept else 0.0
        ahead, where = 0.0, -1
        for r, p in cut.items():
            if p >= 0 and float(diff[r, : p + 1].max()) > ahead:
                ahead, where = float(diff[r, : p + 1].max()), p
        self.max_leak = max(self.max_leak, across, ahead)
        if self.reason:
            return
        # Untouched rows moving is a leak across rows (or state from earlier batches, which the twin's fresh
        # process lacks); checked first so the reason says so.
        if across > self.tol:
            self.reason = (f"outputs of a sequence changed by {across:.3g} when only other sequences of its batch "
                           f"changed (scoring batch {index}, shape {b} x {t}): the model reads across the rows of a "
                           f"batch, or carries state from earlier batches")
        elif ahead > self.tol:
            self.reason = (f"outputs at positions <= {where} of a sequence changed by {ahead:.3g} when only its "
                           f"later tokens changed (scoring batch {index}, shape {b} x {t}): the model reads tokens "
                           f"it has not been given yet")
