"""The airbench task's evaluator: stages the data and scores the recipe's test predictions.

It runs in processes of its own, never in the recipe's. ``stage`` writes the training images and labels to
``ctx.train_dir`` (the recipe's ``train`` sees them), the test images without labels to ``ctx.test_dir``
(``predict`` sees them) and the test labels to ``ctx.private_dir``; ``evaluate`` compares each seed's
``predictions.npy`` against those labels.

Variants:

- ``full``: CIFAR-10 from its python pickle batches (``data_batch_1..5``, ``test_batch``). The folder comes
  from option ``cifar_dir`` (the extracted ``cifar-10-batches-py`` folder, its parent, or the
  ``cifar-10-python.tar.gz`` file); else it is downloaded into option ``download_dir``.
- ``mini``: scikit-learn's bundled 8x8 digits (1797 images), split once into 1297 train / 500 test images,
  stratified by class with a fixed random state.

Both write images as uint8 arrays of shape (N, C, H, W).
"""
from __future__ import annotations

import hashlib
import pickle
import shutil
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
DIGITS_TEST = 500
DIGITS_SPLIT_SEED = 0


# ---------------------------------------------------------------- staging


def stage(ctx: Any) -> None:
    if ctx.variant == "mini":
        xtr, ytr, xte, yte = load_digits_split()
    elif ctx.variant == "full":
        xtr, ytr, xte, yte = load_cifar10(find_cifar10(ctx.options))
    else:
        raise ValueError(f"airbench has variants 'mini' and 'full', not {ctx.variant!r}")
    write_split(Path(ctx.train_dir), Path(ctx.test_dir), Path(ctx.private_dir), xtr, ytr, xte, yte)


def write_split(train: Path, test: Path, private: Path, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray,
                yte: np.ndarray) -> None:
    """Training images and labels to ``train``; test images alone to ``test``; test labels to ``private``."""
    for d in (train, test, private):
        d.mkdir(parents=True, exist_ok=True)
    np.save(train / "train_images.npy", np.ascontiguousarray(xtr, dtype=np.uint8))
    np.save(train / "train_labels.npy", np.asarray(ytr, dtype=np.int64))
    np.save(test / "test_images.npy", np.ascontiguousarray(xte, dtype=np.uint8))
    np.save(private / "test_labels.npy", np.asarray(yte, dtype=np.int64))


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 (N, 1, 8, 8) images (0..16 rescaled to 0..255), split 1297 / 500."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).clip(0, 255).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(images, labels, test_size=DIGITS_TEST, random_state=DIGITS_SPLIT_SEED,
                                          stratify=labels)
    return xtr, ytr, xte, yte


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    try:
        data, labels = d[b"data"], d[b"labels"]
    except (KeyError, TypeError):
        raise ValueError(f"{path} is not a CIFAR-10 python batch (expected a dict with b'data' and b'labels')")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"{path}: b'data' has shape {data.shape} with {len(labels)} labels; expected N x 3072 "
                         f"uint8 rows (1024 red, 1024 green, 1024 blue) and N labels")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def load_cifar10(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test arrays from a ``cifar-10-batches-py`` folder."""
    parts = [_read_batch(folder / name) for name in TRAIN_BATCHES]
    xte, yte = _read_batch(folder / TEST_BATCH)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xte, yte


def _batches_in(folder: Path) -> Path | None:
    for cand in (folder, folder / CIFAR_FOLDER):
        if all((cand / n).is_file() for n in TRAIN_BATCHES + (TEST_BATCH,)):
            return cand
    return None


def find_cifar10(options: dict[str, Any]) -> Path:
    """The folder holding the CIFAR-10 batches: from ``cifar_dir``, else a download into ``download_dir``."""
    given = options.get("cifar_dir")
    if given:
        path = Path(given).expanduser()
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
            return _extract(path, path.parent)
        found = _batches_in(path) if path.is_dir() else None
        if found is None:
            raise FileNotFoundError(
                f"CIFAR-10 not found at {path} (option cifar_dir / env AUTORESEARCH_CIFAR10): expected a folder "
                f"holding {', '.join(TRAIN_BATCHES)} and {TEST_BATCH} (the extracted {CIFAR_FOLDER} folder or "
                f"its parent), or the cifar-10-python.tar.gz file")
        return found
    cache = Path(options.get("download_dir") or Path.home() / ".cache" / "pytest-autoresearch" / "cifar10")
    found = _batches_in(cache)
    if found is not None:
        return found
    archive = cache / "cifar-10-python.tar.gz"
    if not archive.is_file():
        _download(archive)
    return _extract(archive, cache)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(archive: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    part = archive.with_suffix(".part")
    try:
        with urllib.request.urlopen(CIFAR_URL, timeout=60) as r, open(part, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise RuntimeError(
            f"could not download CIFAR-10 from {CIFAR_URL} ({e}). Without internet, put the python version of "
            f"CIFAR-10 on disk and point the task at it: AUTORESEARCH_CIFAR10=/path/to/{CIFAR_FOLDER} (or the "
            f"tar.gz), or place cifar-10-python.tar.gz in {archive.parent}") from None
    if _md5(part) != CIFAR_MD5:
        part.unlink(missing_ok=True)
        raise RuntimeError(f"the download from {CIFAR_URL} has the wrong MD5 (expected {CIFAR_MD5}); try again")
    part.replace(archive)


def _extract(archive: Path, into: Path) -> Path:
    found = _batches_in(into)
    if found is not None:
        return found
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and Path(m.name).name in TRAIN_BATCHES + (TEST_BATCH,)]
        for m in members:
            m.name = f"{CIFAR_FOLDER}/{Path(m.name).name}"  # flatten: never write outside ``into``
            if hasattr(tarfile, "data_filter"):
                tar.extract(m, into, filter="data")
            else:
                tar.extract(m, into)
    found = _batches_in(into)
    if found is None:
        raise FileNotFoundError(f"{archive} does not hold the CIFAR-10 python batches ({CIFAR_FOLDER}/...)")
    return found


# ---------------------------------------------------------------- scoring


def evaluate(ctx: Any) -> dict[str, Any]:
    """Test accuracy of each seed's ``predictions.npy``; a missing or malformed file scores 0 and is named."""
    labels = np.load(Path(ctx.private_dir) / "test_labels.npy")
    accs: list[float] = []
    problems: list[str] = []
    for seed in ctx.seeds:
        path = ctx.seed_dir(seed) / "predictions.npy"
        acc = 0.0
        try:
            pred = np.load(ctx.output(seed, "predictions.npy"), allow_pickle=False)
        except (OSError, ValueError) as e:
            problems.append(f"seed {seed}: cannot read {path.name} ({type(e).__name__}: {e}); predict(ctx) must "
                            f"write an int array of {len(labels)} class indices")
        else:
            if pred.shape != labels.shape or not np.issubdtype(pred.dtype, np.integer):
                problems.append(f"seed {seed}: predictions.npy has shape {pred.shape} dtype {pred.dtype}; "
                                f"expected shape {labels.shape} of integers")
            else:
                acc = float(np.mean(pred == labels))
        accs.append(acc)
    arr = np.asarray(accs)
    return {
        "acc_mean": float(arr.mean()),
        "acc_min": float(arr.min()),
        "acc_max": float(arr.max()),
        "acc_std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "acc_per_seed": [round(a, 6) for a in accs],
        "n_test": int(len(labels)),
        "outputs_valid": not problems,
        "outputs_error": "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""),
    }
