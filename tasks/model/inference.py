"""A trained classifier from its file, whichever form it has: the ``.keras`` model or the ONNX export.

The ONNX path imports neither Keras nor TensorFlow (onnxruntime alone), so it starts in a moment.

Both take uint8 (N, 32, 32, 3) RGB pixels and return (N, 10) class probabilities. The ONNX file carries
its class names in its metadata (``class_names``, a JSON list; :mod:`tasks.model.export`); a ``.keras``
model takes them from the ``<model>.meta.json`` the training stage wrote beside it, where present.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.errors import StageError

ONNX_SUFFIX = ".onnx"
KERAS_SUFFIX = ".keras"
#: The ONNX export's input (uint8 NHWC pixels) and output (class probabilities).
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


@dataclass
class Classifier:
    """A loaded model: ``predict`` maps uint8 images to class probabilities."""

    path: Path
    kind: str  # "onnx" | "keras"
    class_names: list[str] | None
    _model: Any

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if self.kind == "onnx":
            parts = [
                self._model.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + batch_size]})[0]
                for i in range(0, len(images), batch_size)
            ]
            return np.concatenate(parts) if parts else np.zeros((0, 10), np.float32)
        return np.asarray(self._model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float32)

    def label(self, index: int) -> str:
        return self.class_names[index] if self.class_names else f"class {index}"


def onnx_session(path: Path) -> Any:
    """An onnxruntime session on the CPU for the ONNX file at ``path``."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph-optimiser notes are not for users
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load(path: str | Path) -> Classifier:
    """The classifier in ``path`` (``.onnx`` or ``.keras``); a :class:`StageError` if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"model not found: {path} (train it with dvc repro, or fetch it: dvc artifacts get)")
    suffix = path.suffix.lower()
    if suffix not in (ONNX_SUFFIX, KERAS_SUFFIX):
        raise StageError(f"{path}: not a model file (expected a .keras model or its .onnx export)")
    try:
        if suffix == ONNX_SUFFIX:
            session = onnx_session(path)
            names = session.get_modelmeta().custom_metadata_map.get("class_names")
            return Classifier(path, "onnx", json.loads(names) if names else None, session)
        from tasks.model.models import load_model

        return Classifier(path, "keras", _names_beside(path), load_model(path, compile=False))
    except StageError:
        raise
    except Exception as exc:  # onnxruntime and Keras each raise their own kinds for a corrupt file
        raise StageError(f"{path}: cannot load the model ({type(exc).__name__}: {str(exc)[:200]})") from None


def _names_beside(model: Path) -> list[str] | None:
    meta = model.with_suffix(".meta.json")
    try:
        names = json.loads(meta.read_text()).get("class_names")
    except (OSError, ValueError):
        return None
    return list(names) if isinstance(names, list) else None
