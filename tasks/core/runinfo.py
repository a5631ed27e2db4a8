"""What gets saved beside every result so it can be reproduced: params, package versions, devices."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from importlib import metadata
from typing import Any

from pydantic import BaseModel

PACKAGES = (
    "keras",
    "tensorflow",
    "tensorflow-cpu",
    "jax",
    "jaxlib",
    "torch",
    "numpy",
    "pandas",
    "pydantic",
    "dvc",
    "prefect",
    "great-expectations",
    # The export's toolchain: tf2onnx writes models/<model>.onnx, onnxruntime times and runs it.
    "onnx",
    "tf2onnx",
    "onnxruntime",
)


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def as_dict(params: Any) -> dict[str, Any]:
    """A params model (tasks.core.params) or a mapping as plain JSON-able data."""
    return params.model_dump(mode="json") if isinstance(params, BaseModel) else dict(params)


def fingerprint(*parts: Any) -> str:
    """A stable digest of JSON-able parts: equal fingerprints mean the same training problem."""
    blob = json.dumps([as_dict(p) if isinstance(p, BaseModel) else p for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
