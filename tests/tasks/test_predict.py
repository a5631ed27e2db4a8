"""``python -m tasks.predict``: pictures of any size or folders of them, a .keras model or its ONNX export,
top-3 classes per picture (text or JSON), and one ``error:`` line for each input that is not a picture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from tasks.core.errors import StageError
from tasks.core.params import AlexNetParams, parse
from tasks.model.export import write_onnx
from tasks.model.models import build_alexnet, for_inference
from tasks.predict import default_model
from tests.conftest import REPO, params_section, subprocess_env

CLASSES = [f"class-{i}" for i in range(10)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny (untrained) model as ``m.keras`` with its ``m.meta.json``, and its export ``m.onnx``."""
    folder = tmp_path_factory.mktemp("models")
    params = parse(AlexNetParams, params_section("alexnet", variant="seed", width=0.0625, batch_norm=False))
    keras.utils.set_random_seed(1)
    model = for_inference(build_alexnet(params, [125.0] * 3, [63.0] * 3), "flip")
    model.save(folder / "m.keras")
    (folder / "m.meta.json").write_text(json.dumps({"class_names": CLASSES}))
    write_onnx(model, folder / "m.onnx", CLASSES)
    return folder


def predict(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = subprocess_env() | {"PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "tasks.predict", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def pictures(folder: Path) -> dict[str, Path]:
    """A large PNG, a small JPEG, a folder with two PNGs (and a text file, skipped), a text file, a truncated
    PNG and a missing file."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    made = {"big": folder / "big.png", "small": folder / "small.jpg", "dir": folder / "dir"}
    Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)).save(made["big"])
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(made["small"])
    made["dir"].mkdir(exist_ok=True)
    for name in ("a.png", "b.PNG"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB").save(made["dir"] / name)
    (made["dir"] / "notes.txt").write_text("not a picture")
    made["text"] = folder / "readme.txt"
    made["text"].write_text("not a picture")
    made["truncated"] = folder / "broken.png"
    made["truncated"].write_bytes(made["big"].read_bytes()[:200])
    made["missing"] = folder / "missing.png"
    return made


def test_onnx_model_classifies_every_picture_and_reports_each_bad_file(models: Path, tmp_path: Path) -> None:
    made = pictures(tmp_path / "in")
    done = predict(*made.values(), "--model", models / "m.onnx", cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # some inputs failed, the rest were classified
    lines = done.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        str(made["big"]),
        str(made["small"]),
        str(made["dir"] / "a.png"),
        str(made["dir"] / "b.PNG"),
    ]
    for line in lines:
        top = line.split(": ", 1)[1].split(", ")
        assert len(top) == 3 and all(t.split()[0] in CLASSES for t in top)
        probs = [float(t.split()[1]) for t in top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.001
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, done.stderr
    assert any(str(made["text"]) in e and "not an image" in e for e in errors)
    assert any(str(made["truncated"]) in e for e in errors)
    assert any(str(made["missing"]) in e and "no such file" in e for e in errors)
    assert "Traceback" not in done.stderr


def test_keras_model_json_output_matches_the_export(models: Path, tmp_path: Path) -> None:
    made = pictures(tmp_path / "in")
    images = [made["big"], made["dir"]]
    by_keras = predict(*images, "--model", models / "m.keras", "--json", cwd=tmp_path)
    by_onnx = predict(*images, "--model", models / "m.onnx", "--json", cwd=tmp_path)
    assert by_keras.returncode == 0 and by_onnx.returncode == 0, by_keras.stderr + by_onnx.stderr
    keras_rows = [json.loads(line) for line in by_keras.stdout.splitlines()]
    onnx_rows = [json.loads(line) for line in by_onnx.stdout.splitlines()]
    expected = [str(made["big"]), str(made["dir"] / "a.png"), str(made["dir"] / "b.PNG")]
    assert [r["image"] for r in keras_rows] == expected
    for k, o in zip(keras_rows, onnx_rows):
        assert [t["class"] for t in k["top"]] == [t["class"] for t in o["top"]]
        assert np.allclose([t["probability"] for t in k["top"]], [t["probability"] for t in o["top"]], atol=2e-4)


def test_missing_model_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    made = pictures(tmp_path / "in")
    done = predict(made["big"], "--model", tmp_path / "nowhere.onnx", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: model not found: {tmp_path / 'nowhere.onnx'} (train it with dvc repro, or fetch it: dvc artifacts get)"
    ]


def test_without_a_model_named_the_workspace_s_better_export_is_used(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"no model named and no evaluation in .*: run the pipeline here first"):
        default_model(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/evaluate.json").write_text(
        json.dumps({"alexnet": {"test_accuracy": 0.81}, "vgg16": {"test_accuracy": 0.83}})
    )
    with pytest.raises(StageError, match=r"no models/\*\.onnx in .*: run `dvc pull` or the pipeline"):
        default_model(tmp_path)
    (tmp_path / "models").mkdir()
    for name in ("alexnet", "vgg16"):
        (tmp_path / f"models/{name}.onnx").write_bytes(b"onnx")
    assert default_model(tmp_path) == tmp_path / "models/vgg16.onnx"
    (tmp_path / "models/vgg16.onnx").unlink()  # only the one that is there can be used
    assert default_model(tmp_path) == tmp_path / "models/alexnet.onnx"


def test_model_and_artifact_are_one_choice_and_a_stage_needs_an_artifact(tmp_path: Path) -> None:
    both = predict("x.png", "--model", "m.onnx", "--artifact", "alexnet", cwd=tmp_path)
    assert both.returncode == 2 and "--model and --artifact name two models: give one" in both.stderr
    stage = predict("x.png", "--stage", "prod", cwd=tmp_path)
    assert stage.returncode == 2 and "--stage and --version choose a version of an --artifact" in stage.stderr
