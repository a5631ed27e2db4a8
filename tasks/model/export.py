"""The inference model in a form that loads without this project: ONNX, float32, preprocessing inside.

The saved ``.keras`` model needs this package's custom layers to load and keeps the training precision
(``mixed_bfloat16`` where the machine had bf16 units). The export is a float32 copy with the same
weights, written through Keras' own ``model.export(format="onnx")`` (tf2onnx on TensorFlow): uint8
NHWC pixels in (input ``image``), the 10 class probabilities out, the scaling, the normalisation and
the test-time flip averaging inside the graph, as in the ``.keras`` model. The training stages write it
as ``models/<model>.onnx`` beside ``models/<model>.keras`` (:func:`tasks.model.train.write_outputs`);
``python -m tasks.model.export MODEL.keras OUT.onnx`` exports any saved model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import onnx

from tasks.core.atomic import atomic_path
from tasks.core.cli import run_stage
from tasks.core.errors import StageError
from tasks.model.inference import INPUT_NAME, OUTPUT_NAME
from tasks.model.models import INPUT_SHAPE

log = logging.getLogger(__name__)

#: The ONNX opset the export targets: onnxruntime releases of the last years all run it.
OPSET = 17
_FLOAT32 = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}


def _float32_config(config: Any) -> Any:
    """A model config with every layer in float32, and each fixed-statistics ``Normalization`` as the
    equal ``Rescaling`` (x / std - mean / std).

    Keras keeps a ``Normalization`` layer's statistics as tensors created outside the traced function,
    which tf2onnx turns into extra graph inputs instead of constants; ``Rescaling`` computes the same
    from plain numbers inside the graph.
    """
    if isinstance(config, list):
        return [_float32_config(c) for c in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy":
        return _FLOAT32
    if config.get("class_name") == "Normalization" and config.get("module", "").startswith("keras"):
        inner = config["config"]
        std = [max(float(v) ** 0.5, keras.config.epsilon()) for v in inner["variance"]]
        scale = [1.0 / s for s in std]
        offset = [-float(m) / s for m, s in zip(inner["mean"], std)]
        return {
            **config,
            "class_name": "Rescaling",
            "config": {"name": inner["name"], "scale": scale, "offset": offset, "dtype": _FLOAT32},
        }
    return {k: _float32_config(v) for k, v in config.items()}


def float32_copy(model: keras.Model) -> keras.Model:
    """The same functional model with every layer computing in float32 (weights copied as they are)."""
    copy = keras.Model.from_config(_float32_config(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def write_onnx(model: keras.Model, path: Path, class_names: Sequence[str] | None = None) -> None:
    """Export ``model`` (uint8 images in, probabilities out) as a float32 ONNX file at ``path``, atomically;
    ``class_names`` go into its metadata (``class_names``, a JSON list) for whoever loads it."""
    copy = float32_copy(model)
    spec = keras.InputSpec(shape=(None, *INPUT_SHAPE), dtype="uint8", name=INPUT_NAME)
    with atomic_path(path) as tmp, warnings.catch_warnings(), _quiet_tf2onnx():
        # tf2onnx warns about its own TensorFlow-version checks; nothing a user can act on.
        warnings.simplefilter("ignore")
        copy.export(str(tmp), format="onnx", verbose=False, input_signature=[spec], opset_version=OPSET)
        _name_interface(tmp, class_names)
        size = os.path.getsize(tmp)  # inside atomic.together() the file reaches ``path`` only later
    log.info("exported %s (%.1f MB, float32, ONNX opset %d)", path, size / 1e6, OPSET)


def export_saved(keras_path: Path, path: Path, class_names: Sequence[str] | None = None) -> None:
    """Export the ``.keras`` model at ``keras_path`` as ONNX at ``path`` (:func:`write_onnx`).

    The conversion goes through TensorFlow (tf2onnx); on another Keras backend (JAX on a GPU host) it runs
    in a child process on the TensorFlow backend, which reads the same backend-neutral ``.keras`` file.
    """
    if keras.backend.backend() == "tensorflow":
        from tasks.model.models import load_model

        write_onnx(load_model(keras_path, compile=False), path, class_names)
        return
    command = [sys.executable, "-m", "tasks.model.export", str(keras_path), str(path)]
    if class_names:
        command += ["--class-names", json.dumps(list(class_names))]
    done = subprocess.run(command, env={**os.environ, "KERAS_BACKEND": "tensorflow"}, capture_output=True, text=True)
    if done.returncode != 0:
        raise StageError(f"exporting {keras_path} to {path} failed:\n{done.stderr[-2000:]}")


def _name_interface(path: Path, class_names: Sequence[str] | None) -> None:
    """Name the output ``probabilities`` (tf2onnx calls it ``Identity:0``) and the batch axis ``batch``;
    add the class names."""
    proto = onnx.load(str(path))
    graph = proto.graph
    old = graph.output[0].name
    for node in graph.node:
        node.output[:] = [OUTPUT_NAME if name == old else name for name in node.output]
        node.input[:] = [OUTPUT_NAME if name == old else name for name in node.input]
    graph.output[0].name = OUTPUT_NAME
    for value in (*graph.input, *graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    if class_names:
        onnx.helper.set_model_props(proto, {"class_names": json.dumps(list(class_names))})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


class _quiet_tf2onnx:
    """tf2onnx logs every conversion step at INFO and its version checks at WARNING."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("tf2onnx")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.model.export", description="a .keras model -> ONNX")
    parser.add_argument("model", type=Path)
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--class-names", type=json.loads, default=None, help="a JSON list")
    args = parser.parse_args()
    export_saved(args.model, args.onnx, args.class_names)


if __name__ == "__main__":
    run_stage(main)
