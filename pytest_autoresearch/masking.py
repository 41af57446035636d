"""Known secret values, masked wherever text leaves the harness (lineage notes, logs, terminal, reports).

Secrets are collected from the environment when the plugin starts (any variable whose name says KEY, TOKEN,
SECRET, PASSWORD, CREDENTIAL or AUTH), so they stay masked after an agent has removed its key from
``os.environ``.
"""
from __future__ import annotations

import os
import re

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|AUTH", re.I)
KEY_SHAPES = re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}|sk-[A-Za-z0-9]{32,}|hf_[A-Za-z0-9]{24,}|gh[pousr]_[A-Za-z0-9]{30,}")
# C0 controls except tab and newline, DEL, C1 controls, and the bidirectional overrides that reorder text.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
MASK = "[secret]"
_known: set[str] = set()


def register(value: str | None) -> None:
    """Mask ``value`` from now on (values shorter than 8 characters would mask ordinary words)."""
    if value and len(value) >= 8:
        _known.add(value)


def register_environment(environ: "os._Environ[str] | dict[str, str] | None" = None) -> None:
    for name, value in (os.environ if environ is None else environ).items():
        if SECRET_NAME.search(name):
            register(value)


def mask(text: str) -> str:
    """``text`` with every known secret value, and anything shaped like an API key, replaced."""
    if not text:
        return text
    for s in sorted(_known, key=len, reverse=True):
        if s in text:
            text = text.replace(s, MASK)
    return KEY_SHAPES.sub(MASK, text)


def clean(text: str | None, limit: int | None = None) -> str:
    """Text safe to store and print: secrets masked, control characters (ANSI escapes included) removed."""
    out = CONTROL.sub("", mask(text or ""))
    return out[:limit] if limit is not None else out


class StreamMasker:
    """Masks known secrets in a byte stream cut into arbitrary chunks: the last bytes of each chunk are held
    back until the next one, so a secret split across two chunks is still found."""

    def __init__(self) -> None:
        self.secrets = sorted((x.encode() for x in _known), key=len, reverse=True)
        self.hold = max((len(x) for x in self.secrets), default=1) - 1
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self.secrets:
            return chunk
        data = self._mask(self.pending + chunk)
        cut = max(0, len(data) - self.hold)
        self.pending = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        out, self.pending = self._mask(self.pending), b""
        return out

    def _mask(self, data: bytes) -> bytes:
        for s in self.secrets:
            data = data.replace(s, MASK.encode())
        return data
