"""The prepared splits: archive -> stratified train/validation/test arrays plus a JSON of facts,
and reading them back (the ``preprocess`` stage writes them, every later stage reads them).

Outputs (``data/prepared/``): ``train.npz``, ``val.npz``, ``test.npz`` -- each with ``x``
(N, 32, 32, 3) uint8 and ``y`` (N,) uint8 -- and ``facts.json`` (sizes, class counts, per-channel
mean/std of the train split, a SHA-256 of every array). The validation split is carved from the
official training batches; the test batch is kept whole (or subset) and untouched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.atomic import save_arrays, write_json
from tasks.core.errors import reading
from tasks.core.params import DataParams
from tasks.core.paths import PREPARED
from tasks.data.archive import Cifar10

SPLITS = ("train", "val", "test")
NUM_CLASSES = 10


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray


def stratified_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` items drawn so each class keeps its share (largest-remainder rounding)."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n / len(labels))
    take = np.floor(exact).astype(int)
    # Hand the leftover slots to the classes with the largest fractional parts; ties go to lower labels.
    leftover = n - int(take.sum())
    take[np.argsort(-(exact - take), kind="stable")[:leftover]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def make_splits(data: Cifar10, params: DataParams) -> dict[str, Split]:
    """The pure heart of the stage: subsets (if any), then the stratified validation split."""
    rng = np.random.default_rng(params.seed)
    x_pool, y_pool = data.x_train, data.y_train
    if params.limit_train is not None and params.limit_train < len(y_pool):
        keep = stratified_sample(y_pool, params.limit_train, rng)
        x_pool, y_pool = x_pool[keep], y_pool[keep]
    x_test, y_test = data.x_test, data.y_test
    if params.limit_test is not None and params.limit_test < len(y_test):
        keep = stratified_sample(y_test, params.limit_test, rng)
        x_test, y_test = x_test[keep], y_test[keep]

    n_val = round(params.val_fraction * len(y_pool))
    val_idx = stratified_sample(y_pool, n_val, rng) if n_val else np.array([], dtype=int)
    train_mask = np.ones(len(y_pool), dtype=bool)
    train_mask[val_idx] = False
    return {
        "train": Split(x_pool[train_mask], y_pool[train_mask]),
        "val": Split(x_pool[val_idx], y_pool[val_idx]),
        "test": Split(x_test, y_test),
    }


def array_digest(array: np.ndarray) -> str:
    """SHA-256 over dtype, shape and bytes, so equal digests mean identical arrays."""
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


def channel_stats(images: np.ndarray, chunk: int = 5000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in 0..255 units, accumulated in float64 chunks to bound memory."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].astype(np.float64)
        total += block.sum(axis=(0, 1, 2))
        total_sq += np.square(block).sum(axis=(0, 1, 2))
    n = len(images) * images.shape[1] * images.shape[2]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def facts(splits: dict[str, Split], data: Cifar10, params: DataParams) -> dict[str, Any]:
    mean, std = channel_stats(splits["train"].x)
    return {
        "class_names": list(data.class_names),
        "source": {"train": int(len(data.y_train)), "test": int(len(data.y_test))},
        "params": {
            "val_fraction": params.val_fraction,
            "seed": params.seed,
            "limit_train": params.limit_train,
            "limit_test": params.limit_test,
        },
        "sizes": {name: int(len(s.y)) for name, s in splits.items()},
        "class_counts": {name: np.bincount(s.y, minlength=NUM_CLASSES).tolist() for name, s in splits.items()},
        "train_channel_mean": mean,
        "train_channel_std": std,
        "sha256": {name: {"x": array_digest(s.x), "y": array_digest(s.y)} for name, s in splits.items()},
    }


def load_split(name: str, folder: str | Path = PREPARED) -> Split:
    """Load one prepared split written by :func:`write_splits`."""
    path = Path(folder) / f"{name}.npz"
    with reading(path, f"the prepared {name} split"), np.load(path) as npz:
        return Split(npz["x"], npz["y"])


def write_splits(splits: dict[str, Split], info: dict[str, Any], folder: str | Path = PREPARED) -> None:
    folder = Path(folder)
    for name, split in splits.items():
        save_arrays(folder / f"{name}.npz", x=split.x, y=split.y)
    write_json(folder / "facts.json", info)
