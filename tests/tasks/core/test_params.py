"""params.yaml -> typed config: every bad value is named, with its key, before any work starts."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from flows.sweep import spec as sweep_spec
from tasks.core.errors import ParamsError
from tasks.core.params import DataParams, SECTIONS, ValidateParams, check_sections, load, load_section, parse
from tools.overrides import load_overlay, merged
from tests.conftest import REPO, copy_project, dvc, params_section, run, set_params


def check(name: str, **changes: object) -> object:
    """params.yaml's section ``name`` with ``changes``, through its model."""
    return parse(SECTIONS[name], params_section(name, **changes))


def test_repository_params_parse() -> None:
    data = load(DataParams, REPO / "params.yaml")
    assert data.sha256 == "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
    assert data.val_fraction == 0.1 and data.limit_train is None
    assert load(ValidateParams, REPO / "params.yaml").channel_mean == (125.3, 123.0, 113.9)
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(base) == set(SECTIONS), "a section no model checks, or a model without its section"


@pytest.mark.parametrize("overlay", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_overlay_validates(overlay: Path) -> None:
    params = merged(yaml.safe_load((REPO / "params.yaml").read_text()), load_overlay(overlay))
    for name, model in SECTIONS.items():
        parse(model, params[name])


@pytest.mark.parametrize("sweep", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_experiment_validates(sweep: Path) -> None:
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    for experiment in sweep_spec.load(sweep, REPO).experiments():
        overlay: dict[str, dict[str, object]] = {}
        for dotted, value in experiment.params.items():
            section, key = dotted.split(".", 1)
            overlay.setdefault(section, {})[key] = value
        params = merged(base, overlay)
        for name, model in SECTIONS.items():
            parse(model, params[name])


# One case per kind of bad value; each message names the exact key.
BAD = {
    "unknown key, with the nearest known one": (
        "alexnet",
        {"momentun": 0.9},
        "'alexnet.momentun' is not a known key (did you mean 'momentum'?)",
    ),
    "unknown key, nothing near": ("evaluate", {"colour": "red"}, "'evaluate.colour' is not a known key"),
    "a string for an integer": ("data", {"seed": "3"}, "'data.seed' must be an integer, got '3'"),
    "a boolean for an integer": ("data", {"seed": True}, "'data.seed' must be an integer, got true"),
    "a string for a number": ("data", {"val_fraction": "x"}, "'data.val_fraction' must be a finite number, got 'x'"),
    "not finite": ("alexnet", {"learning_rate": float("nan")}, "'alexnet.learning_rate' must be a finite number"),
    "a number for a string": (
        "data",
        {"sha256": 0},  # sha256: 0000 in YAML
        "'data.sha256' must be a string, got 0 (YAML reads it as a number: put it in quotes)",
    ),
    "not a boolean or null": (
        "vgg16",
        {"require_gpu": "yes"},
        "'vgg16.require_gpu' must be true or false (or null), got 'yes'",
    ),
    "a list of the wrong length": (
        "validate",
        {"channel_mean": [1, 2]},
        "'validate.channel_mean' must be a list of 3 numbers, got [1, 2]",
    ),
    "below the minimum": ("data", {"limit_train": 5}, "'data.limit_train' must be >= 20, got 5"),
    "above the maximum": ("data", {"val_fraction": 0.9}, "'data.val_fraction' must be <= 0.5, got 0.9"),
    "not above the bound": ("alexnet", {"width": 0}, "'alexnet.width' must be > 0.0, got 0"),
    "a malformed digest": ("data", {"sha256": "abc"}, "'data.sha256' must be 64 hexadecimal digits, got 'abc'"),
    "a choice not offered": (
        "alexnet",
        {"optimizer": "rmsprop"},
        "'alexnet.optimizer' must be one of adam, adamw, sgd; got 'rmsprop'",
    ),
    "a test-time augmentation not offered": (
        "vgg16",
        {"test_time_augmentation": "mirror"},
        "'vgg16.test_time_augmentation' must be one of none, flip, flip_translate; got 'mirror'",
    ),
    "auto, true or false only": (
        "vgg16",
        {"mixed_precision": 1},
        "'vgg16.mixed_precision' must be one of true, false, auto; got 1",
    ),
    "a weights file that is not there": (
        "vgg16",
        {"weights": "missing/notop.h5"},
        "'vgg16.weights' is neither 'imagenet', 'none' nor an existing weights file: missing/notop.h5",
    ),
    "batch norm with ImageNet weights": (
        "vgg16",
        {"weights": "imagenet", "batch_norm": True},
        "'vgg16.batch_norm' true needs vgg16.weights: none (got 'imagenet')",
    ),
    "a narrower VGG16 with ImageNet weights": (
        "vgg16",
        {"weights": "imagenet", "width": 0.5},
        "'vgg16.width' 0.5 needs vgg16.weights: none (got 'imagenet')",
    ),
    "whitening over ImageNet weights": (
        "vgg16",
        {"weights": "imagenet", "whiten_conv1": True},
        "'vgg16.whiten_conv1' true needs vgg16.weights: none (got 'imagenet'): the whitening would overwrite",
    ),
    "warmup as long as training": (
        "alexnet",
        {"epochs": 5, "warmup_epochs": 5},
        "'alexnet.warmup_epochs' (5.0) must be less than epochs (5)",
    ),
    "head phase longer than training": (
        "vgg16",
        {"epochs": 2, "head_epochs": 5},
        "'vgg16.head_epochs' (5) cannot exceed vgg16.epochs (2)",
    ),
    "warmup longer than a phase": (
        "vgg16",
        {"epochs": 12, "head_epochs": 2, "warmup_epochs": 3},
        "'vgg16.warmup_epochs' (3.0) must be less than the 2 epochs of the head phase",
    ),
    "patience of zero": ("alexnet", {"early_stopping_patience": 0}, "'alexnet.early_stopping_patience' must be >= 1"),
    "epochs no real run asks for": (
        "alexnet",
        {"epochs": 10_000_000_000},
        "'alexnet.epochs' must be <= 10000, got 10000000000",
    ),
    "a batch no real run asks for": ("vgg16", {"batch_size": 10**9}, "'vgg16.batch_size' must be <= 65536"),
    "an image size no real run asks for": ("vgg16", {"input_size": 100_000}, "'vgg16.input_size' must be <= 1024"),
    "an evaluation batch no real run asks for": ("evaluate", {"batch_size": 10**7}, "'evaluate.batch_size' must be <="),
    "a download deadline of nothing": ("data", {"download_deadline": 0}, "'data.download_deadline' must be > 0.0"),
    "a subset too small for its validation split": (
        "data",
        {"limit_train": 50, "val_fraction": 0.1},
        "'data.limit_train' (50) leaves 5 validation images at val_fraction 0.1",
    ),
}


@pytest.mark.parametrize(("section", "changes", "message"), BAD.values(), ids=BAD.keys())
def test_bad_values_are_named(section: str, changes: dict[str, object], message: str) -> None:
    with pytest.raises(ParamsError, match="^params.yaml: ") as caught:
        check(section, **changes)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_missing_key() -> None:
    section = {k: v for k, v in params_section("alexnet").items() if k != "seed"}
    with pytest.raises(ParamsError, match="'alexnet.seed' is missing"):
        parse(SECTIONS["alexnet"], section)


def test_check_sections_checks_only_the_named_sections() -> None:
    doc = yaml.safe_load((REPO / "params.yaml").read_text())
    check_sections(doc, ["data", "alexnet", "not-a-section"])
    doc["alexnet"] = {**doc["alexnet"], "learning_rat": 0.1}
    check_sections(doc, ["data", "vgg16"])  # alexnet's typo is no concern of these stages
    with pytest.raises(ParamsError, match="'alexnet.learning_rat' is not a known key .did you mean 'learning_rate'"):
        check_sections(doc, ["data", "alexnet"])
    with pytest.raises(ParamsError, match="section 'evaluate' is missing or not a mapping"):
        check_sections({k: v for k, v in doc.items() if k != "evaluate"}, ["evaluate"])


def test_missing_section_and_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("validate: {}\nalexnett: {}\n")
    with pytest.raises(ParamsError, match="section 'data' is missing"):
        load_section("data", path)
    with pytest.raises(ParamsError, match="section 'alexnet' is missing or not a mapping .is 'alexnett' a misspel"):
        load_section("alexnet", path)
    path.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_section("data", path)


def test_special_values_keep_their_meaning(tmp_path: Path) -> None:
    assert check("alexnet", require_gpu=None).require_gpu is None  # null: inherit train.require_gpu
    assert check("alexnet", mixed_precision=True, jit_compile="auto").mixed_precision is True
    assert check("vgg16", weights="none").weights == "none"
    weights = tmp_path / "notop.weights.h5"
    weights.write_bytes(b"")
    assert check("vgg16", weights=str(weights)).weights == str(weights)
    assert check("data", sha256="AB" * 32).sha256 == "ab" * 32
    assert check("alexnet", learning_rate=1).learning_rate == 1.0  # an int is a fine float
    params = check("alexnet")
    assert params.recipe is params and params.recipe.momentum == 0.9
    with pytest.raises(ValueError, match="frozen"):
        params.epochs = 3  # type: ignore[misc]


def misspell(repo: Path, section: str, key: str, typo: str) -> None:
    """Rename ``section.key`` to ``section.typo`` in the repo's params.yaml."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][typo] = params[section].pop(key)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    ("module", "section", "key", "typo"),
    [
        ("tasks.download", "data", "seed", "sede"),
        ("tasks.preprocess", "data", "val_fraction", "val_fracton"),
        ("tasks.validate", "validate", "max_leaked_images", "max_leaked_image"),
        ("tasks.train_alexnet", "alexnet", "momentum", "momentun"),
        ("tasks.train_vgg16", "train", "checkpoint_dir", "checkpoint_directory"),
        ("tasks.evaluate", "evaluate", "worst_mistakes", "worst_mistake"),
    ],
)
def test_each_stage_checks_its_params_before_any_work(
    tmp_path: Path, module: str, section: str, key: str, typo: str
) -> None:
    """In a copy of the project without any data: a stage that read data before its params would fail
    otherwise; and before it imports Keras, TensorFlow, JAX or Great Expectations (``-X importtime`` lists
    every module the process imported)."""
    repo = copy_project(tmp_path / "repo")
    misspell(repo, section, key, typo)
    proc = run([sys.executable, "-X", "importtime", "-m", module], cwd=repo, check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr
    expected = f"error: params.yaml: '{section}.{typo}' is not a known key (did you mean '{key}'?)"
    assert error_lines(proc.stderr) == [expected] and "Traceback" not in proc.stderr
    made = {p.name for p in repo.iterdir()} - {"tasks", "dvc.yaml", "params.yaml", ".dvcignore"}
    assert not made, f"{module} wrote {made} before checking its params"
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "pydantic" in imported, "-X importtime lists the imports"
    heavy = imported & {"keras", "tensorflow", "jax", "great_expectations"}
    assert not heavy, f"{module} imported {heavy} before refusing its params"


@pytest.mark.e2e
def test_dvc_repro_stops_on_a_misspelt_key(dvc_repo: Path) -> None:
    misspell(dvc_repo, "data", "seed", "sede")
    proc = dvc("repro", "download", cwd=dvc_repo, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert error_lines(output) == ["error: params.yaml: 'data.sede' is not a known key (did you mean 'seed'?)"]
    assert "Traceback" not in output
    assert not (dvc_repo / "data/raw").exists()


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    """YAML loaders keep the last value silently; DVC refuses such a file, and so does every stage."""
    text = (REPO / "params.yaml").read_text()
    first = text.index("\n  epochs: 30")
    doubled = text[:first] + "\n  epochs: 3" + text[first:]  # alexnet.epochs twice, one line apart
    line = text[:first].count("\n") + 2
    repo = copy_project(tmp_path / "repo")
    (repo / "params.yaml").write_text(doubled)
    expected = f"'alexnet.epochs' is given twice (lines {line} and {line + 1})"
    with pytest.raises(ParamsError, match=re.escape(expected)):
        load_section("alexnet", repo / "params.yaml")
    proc = run([sys.executable, "-m", "tasks.train_alexnet"], cwd=repo, check=False, timeout=300)
    print(error_lines(proc.stderr), "exit", proc.returncode)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == [
        f"error: params.yaml: {expected}; keep one (YAML would silently take the last, and DVC refuses the file)"
    ]


def test_huge_epochs_stop_the_stage_at_once(tmp_path: Path) -> None:
    repo = copy_project(tmp_path / "repo")
    set_params(repo, alexnet={"epochs": 10_000_000_000})
    proc = run([sys.executable, "-m", "tasks.train_alexnet"], cwd=repo, check=False, timeout=300)
    print(error_lines(proc.stderr), "exit", proc.returncode)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == ["error: params.yaml: 'alexnet.epochs' must be <= 10000, got 10000000000"]


def test_checkpoint_dir_naming_a_file_stops_the_stage_at_once(tmp_path: Path) -> None:
    repo = copy_project(tmp_path / "repo")
    set_params(repo, train={"checkpoint_dir": "dvc.yaml"})
    proc = run([sys.executable, "-m", "tasks.train_vgg16"], cwd=repo, check=False, timeout=300)
    print(error_lines(proc.stderr), "exit", proc.returncode)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    expected = "error: params.yaml: 'train.checkpoint_dir' names a file, not a folder: dvc.yaml"
    assert error_lines(proc.stderr) == [expected]
