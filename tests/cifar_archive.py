"""Build small CIFAR-10 "python version" archives for tests -- sound ones and broken-on-purpose ones.

Images are a per-class colour plus noise, so every image is distinct (no accidental leakage),
none is constant, and a tiny model can learn the classes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

ROOT = "cifar-10-batches-py"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_batch(n: int, rng: np.random.Generator, label: str) -> dict[bytes, object]:
    """A batch dict shaped like the real ones: planar RGB rows of 3072 uint8, int labels."""
    labels = np.tile(np.arange(10), n // 10 + 1)[:n]
    rng.shuffle(labels)
    base = np.array([[(37 * c) % 256, (91 * c + 40) % 256, (53 * c + 100) % 256] for c in range(10)])
    images = base[labels][:, None, None, :] + rng.normal(0, 25, size=(n, 32, 32, 3))
    images = np.clip(images, 0, 255).astype(np.uint8)
    planar = images.transpose(0, 3, 1, 2).reshape(n, 3072)
    return {
        b"batch_label": label.encode(),
        b"labels": labels.tolist(),
        b"data": planar,
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def make_archive(
    path: Path,
    per_batch: int = 60,
    n_test: int = 100,
    seed: int = 0,
    *,
    skip: str | None = None,
    extra: list[tarfile.TarInfo] | None = None,
    replace: dict[str, bytes] | None = None,
) -> str:
    """Write a CIFAR-format .tar.gz and return its sha256: the same arguments give the same bytes (no
    time in the gzip header or the members), so the archive's digest -- a DVC param -- is stable.

    ``skip`` leaves a member out, ``extra`` appends raw members (links, ``../`` names, devices),
    ``replace`` swaps a member's bytes (e.g. a malicious pickle).
    """
    rng = np.random.default_rng(seed)
    members: dict[str, bytes] = {}
    for i in range(1, 6):
        members[f"data_batch_{i}"] = pickle.dumps(make_batch(per_batch, rng, f"training batch {i} of 5"), protocol=2)
    members["test_batch"] = pickle.dumps(make_batch(n_test, rng, "testing batch 1 of 1"), protocol=2)
    members["batches.meta"] = pickle.dumps(
        {b"label_names": [n.encode() for n in CLASS_NAMES], b"num_cases_per_batch": per_batch, b"num_vis": 3072},
        protocol=2,
    )
    members.update(replace or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    # tarfile's "w:gz" would write the current time (and the file name) into the gzip header.
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        root = tarfile.TarInfo(ROOT)
        root.type = tarfile.DIRTYPE
        tar.addfile(root)
        for name, payload in members.items():
            if name != skip:
                _add(tar, f"{ROOT}/{name}", payload)
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return hashlib.sha256(path.read_bytes()).hexdigest()
