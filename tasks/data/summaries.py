"""Arrays -> small pandas frames that Great Expectations can check (it validates tables, not tensors).

Pure functions: each frame is one table the validate stage runs a suite over.

* ``images``: one row per image of every split (shape, dtype, pixel range, non-finite count,
  constant flag, and whether a test image also appears in train/validation).
* ``classes``: one row per (split, class present) with its count and deviation from a balanced split.
* ``sizes``: one row per split, the actual and the expected size given the params.
* ``channels``: one row per colour channel, train mean/std and their distance from the known figures.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import pandas as pd

from tasks.core.params import DataParams, ValidateParams
from tasks.data.splits import NUM_CLASSES, Split, channel_stats

CHUNK = 4096


def _per_image_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Min, max, mean, std and non-finite count per image, over finite values, in bounded-memory chunks."""
    n = len(x)
    out = {k: np.empty(n) for k in ("min", "max", "mean", "std")}
    out["nonfinite"] = np.zeros(n, dtype=np.int64)
    for start in range(0, n, CHUNK):
        block = x[start : start + CHUNK].reshape(min(CHUNK, n - start), -1).astype(np.float64)
        finite = np.isfinite(block)
        out["nonfinite"][start : start + len(block)] = (~finite).sum(axis=1)
        block = np.where(finite, block, np.nan)
        with np.errstate(all="ignore"):  # an all-NaN image gives NaN stats, which the suite then flags
            out["min"][start : start + len(block)] = np.nanmin(block, axis=1)
            out["max"][start : start + len(block)] = np.nanmax(block, axis=1)
            out["mean"][start : start + len(block)] = np.nanmean(block, axis=1)
            out["std"][start : start + len(block)] = np.nanstd(block, axis=1)
    return out


def image_hashes(x: np.ndarray) -> list[bytes]:
    """A digest per image: equal digests mean byte-identical images."""
    flat = np.ascontiguousarray(x).reshape(len(x), -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


def images_frame(splits: Mapping[str, Split]) -> pd.DataFrame:
    """One row per image of every split; ``leaked`` marks test images also found in train or val."""
    seen = set()
    for name in ("train", "val"):
        if name in splits:
            seen.update(image_hashes(splits[name].x))
    frames = []
    for name, split in splits.items():
        n = len(split.y)
        stats = _per_image_stats(split.x)
        leaked = np.array([h in seen for h in image_hashes(split.x)]) if name == "test" else np.zeros(n, bool)
        frames.append(
            pd.DataFrame(
                {
                    "split": name,
                    "position": np.arange(n),
                    "label": split.y.astype(np.int64),
                    "shape": "x".join(str(d) for d in split.x.shape[1:]),
                    "dtype": str(split.x.dtype),
                    **stats,
                    "is_constant": (stats["std"] == 0).astype(np.int64),
                    "leaked": leaked.astype(np.int64),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def classes_frame(splits: Mapping[str, Split]) -> pd.DataFrame:
    """One row per (split, class 0..9): its count and relative deviation from an even share.

    CIFAR-10 is balanced and the splits are stratified, so every class should hold about 1/10 of
    each split. An absent class gets a null deviation: its absence is the presence check's to
    report, so the balance check (which skips nulls) does not report it twice.
    """
    rows = []
    for name, split in splits.items():
        labels = split.y.astype(np.int64)
        counts = np.bincount(labels[(labels >= 0) & (labels < NUM_CLASSES)], minlength=NUM_CLASSES)
        expected = len(split.y) / NUM_CLASSES
        for label, count in enumerate(counts):
            rows.append(
                {
                    "split": name,
                    "label": label,
                    "count": int(count),
                    "expected": expected,
                    "deviation": abs(count - expected) / expected if count else np.nan,
                }
            )
    return pd.DataFrame(rows)


def expected_sizes(source: Mapping[str, int], params: DataParams) -> dict[str, int]:
    """Split sizes that the preprocess stage must produce from an archive of ``source`` sizes."""
    pool = source["train"] if params.limit_train is None else min(params.limit_train, source["train"])
    test = source["test"] if params.limit_test is None else min(params.limit_test, source["test"])
    val = round(params.val_fraction * pool)
    return {"train": pool - val, "val": val, "test": test}


def sizes_frame(splits: Mapping[str, Split], expected: Mapping[str, int]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"split": name, "actual": int(len(splits[name].y)) if name in splits else 0, "expected": int(size)}
            for name, size in expected.items()
        ]
    )


def channels_frame(train_x: np.ndarray, params: ValidateParams) -> pd.DataFrame:
    """Train per-channel mean/std and their absolute distance from the published CIFAR-10 figures."""
    mean, std = channel_stats(train_x)
    return pd.DataFrame(
        {
            "channel": ["red", "green", "blue"],
            "mean": mean,
            "std": std,
            "mean_error": np.abs(np.array(mean) - np.array(params.channel_mean)),
            "std_error": np.abs(np.array(std) - np.array(params.channel_std)),
        }
    )
