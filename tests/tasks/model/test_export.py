"""The ONNX export: float32 whatever the training precision, and the same predictions as the Keras model when
loaded by an interpreter that has onnxruntime but cannot import this project."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import keras
import numpy as np
import onnx

from tasks.core.params import AlexNetParams, parse
from tasks.data.splits import load_split
from tasks.model import export
from tasks.model.models import build_alexnet, for_inference, load_model
from tests.conftest import copy_of, finish, params_section, stage

#: Runs in an interpreter without site processing (so no .pth file, and no editable install's finder) and
#: with only the site-packages folder on its path: numpy and onnxruntime import, this project does not.
ISOLATED = """
import importlib.util, sys
sys.path.append(sys.argv[1])
assert importlib.util.find_spec("tasks") is None, "the project must not be importable here"
import numpy as np, onnxruntime
session = onnxruntime.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
images = np.load(sys.argv[3])
(probs,) = session.run(["probabilities"], {"image": images})
np.save(sys.argv[4], probs)
print(session.get_modelmeta().custom_metadata_map.get("class_names", ""))
"""


def run_isolated(model: Path, images: np.ndarray, tmp_path: Path) -> tuple[np.ndarray, str]:
    """``model``'s probabilities for ``images`` from onnxruntime in an interpreter that cannot see the project."""
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", ISOLATED, sysconfig.get_paths()["purelib"], str(model)]
        + [str(tmp_path / "images.npy"), str(tmp_path / "probs.npy")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return np.load(tmp_path / "probs.npy"), done.stdout.strip()


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(share of images with the same top-1 class, largest probability difference)."""
    return float(np.mean(a.argmax(1) == b.argmax(1))), float(np.abs(a - b).max())


def test_trained_export_agrees_with_keras_model_without_the_project(workspace: Path, tmp_path: Path) -> None:
    """The training stage writes models/alexnet.onnx beside the .keras model; on the test split the two agree."""
    work = copy_of(workspace, tmp_path, alexnet={"epochs": 1, "warmup_epochs": 0, "mixed_precision": False})
    code, log = finish(stage("tasks.train_alexnet", work))
    assert code == 0, log
    assert "WARNING" not in log, log
    test = load_split("test", work / "data/prepared")
    expected = load_model(work / "models/alexnet.keras").predict(test.x, verbose=0)
    probs, names = run_isolated(work / "models/alexnet.onnx", test.x, tmp_path)
    same_top1, max_diff = agreement(probs, expected)
    assert same_top1 >= 0.999 and max_diff <= 1e-3, (same_top1, max_diff)
    assert probs.shape == (len(test.y), 10) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    facts = json.loads((work / "data/prepared/facts.json").read_text())
    assert json.loads(names) == facts["class_names"]


def test_export_of_a_bfloat16_model_is_float32_with_flip_averaging(tmp_path: Path) -> None:
    """A model trained under mixed_bfloat16 exports as float32: it matches the float32 copy to float32
    rounding, and averages each image with its mirror image as the saved model does."""
    params = parse(AlexNetParams, params_section("alexnet", variant="seed", width=0.0625, batch_norm=True))
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        model = for_inference(build_alexnet(params, [125.0] * 3, [63.0] * 3), "flip")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    export.write_onnx(model, tmp_path / "m.onnx", [f"c{i}" for i in range(10)])
    proto = onnx.load(str(tmp_path / "m.onnx"))
    graph = proto.graph
    kinds = {init.data_type for init in graph.initializer}
    kinds |= {v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    kinds |= {a.i for node in graph.node if node.op_type == "Cast" for a in node.attribute if a.name == "to"}
    assert onnx.TensorProto.BFLOAT16 not in kinds and onnx.TensorProto.FLOAT16 not in kinds
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    probs, _ = run_isolated(tmp_path / "m.onnx", images, tmp_path)
    reference = export.float32_copy(model).predict(images, verbose=0)
    assert np.abs(probs - reference).max() < 1e-5
    mirrored, _ = run_isolated(tmp_path / "m.onnx", images[:, :, ::-1], tmp_path)
    assert np.abs(probs - mirrored).max() < 1e-5, "flip averaging: an image and its mirror score the same"
