"""``params.yaml`` -> typed, checked config objects: the one place where configuration is parsed.

Every stage reads only its own section (DVC tracks params per stage), and every bad value is
reported as a :class:`~tasks.errors.ParamsError` naming the key, before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tasks.errors import ParamsError
from tasks.paths import PARAMS

PARAMS_FILE = PARAMS

T = TypeVar("T")


def load_section(name: str, path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read one top-level section of the params file as a plain dict."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    section = doc.get(name)
    if not isinstance(section, dict):
        raise ParamsError(f"{path}: section '{name}' is missing or not a mapping")
    return section


class _Reader:
    """Typed getters over one section that name the offending key in every error."""

    def __init__(self, section: dict[str, Any], prefix: str) -> None:
        self.section = section
        self.prefix = prefix

    def _raw(self, key: str, default: Any = ...) -> Any:
        if key in self.section:
            return self.section[key]
        if default is ...:
            raise ParamsError(f"params.yaml: '{self.prefix}.{key}' is missing")
        return default

    def fail(self, key: str, why: str) -> ParamsError:
        return ParamsError(f"params.yaml: '{self.prefix}.{key}' {why}")

    def str(self, key: str, default: Any = ..., choices: tuple[str, ...] | None = None) -> str:
        value = self._raw(key, default)
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def int(self, key: str, default: Any = ..., minimum: int | None = None, optional: bool = False) -> Any:
        value = self._raw(key, default)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"must be >= {minimum}, got {value}")
        return value

    def float(
        self, key: str, default: Any = ..., low: float | None = None, high: float | None = None, optional: bool = False
    ) -> Any:
        value = self._raw(key, default)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, f"must be a finite number, got {value!r}")
        if low is not None and value < low:
            raise self.fail(key, f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise self.fail(key, f"must be <= {high}, got {value}")
        return float(value)

    def bool(self, key: str, default: Any = ...) -> bool:
        value = self._raw(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def floats(self, key: str, length: int, default: Any = ...) -> tuple[float, ...]:
        value = self._raw(key, default)
        if (
            not isinstance(value, list)
            or len(value) != length
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise self.fail(key, f"must be a list of {length} numbers, got {value!r}")
        return tuple(float(v) for v in value)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataParams:
    """Section ``data``: where the archive comes from and how it is split."""

    url: str
    sha256: str
    val_fraction: float
    seed: int
    limit_train: int | None
    limit_test: int | None


def data_params(section: dict[str, Any]) -> DataParams:
    r = _Reader(section, "data")
    sha = r.str("sha256").lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise r.fail("sha256", f"must be 64 hexadecimal digits, got {sha!r}")
    url = r.str("url")
    if not url.strip():
        raise r.fail("url", "must not be empty")
    return DataParams(
        url=url,
        sha256=sha,
        val_fraction=r.float("val_fraction", low=0.0, high=0.5),
        seed=r.int("seed", minimum=0),
        limit_train=r.int("limit_train", None, minimum=20, optional=True),
        limit_test=r.int("limit_test", None, minimum=10, optional=True),
    )


def load_data_params(path: str | Path = PARAMS_FILE) -> DataParams:
    return data_params(load_section("data", path))


# --------------------------------------------------------------------------- validate


@dataclass(frozen=True)
class ValidateParams:
    """Section ``validate``: the tolerances of the data expectations."""

    class_balance_tolerance: float
    channel_mean: tuple[float, float, float]
    channel_std: tuple[float, float, float]
    channel_stats_tolerance: float
    max_constant_images: int
    max_leaked_images: int


def validate_params(section: dict[str, Any]) -> ValidateParams:
    r = _Reader(section, "validate")
    return ValidateParams(
        class_balance_tolerance=r.float("class_balance_tolerance", low=0.0, high=1.0),
        channel_mean=r.floats("channel_mean", 3),  # type: ignore[arg-type]
        channel_std=r.floats("channel_std", 3),  # type: ignore[arg-type]
        channel_stats_tolerance=r.float("channel_stats_tolerance", low=0.0),
        max_constant_images=r.int("max_constant_images", minimum=0),
        max_leaked_images=r.int("max_leaked_images", minimum=0),
    )


def load_validate_params(path: str | Path = PARAMS_FILE) -> ValidateParams:
    return validate_params(load_section("validate", path))


# --------------------------------------------------------------------------- training

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "student", "cosine", "onecycle")
AUGMENTATIONS = ("none", "student", "crop_flip")
ALEXNET_VARIANTS = ("seed", "paper")
VGG16_BLOCKS = ("block1", "block2", "block3", "block4", "block5")


@dataclass(frozen=True)
class TrainParams:
    """Section ``train``: what both training stages share."""

    require_gpu: bool
    checkpoint_dir: str


def train_params(section: dict[str, Any]) -> TrainParams:
    r = _Reader(section, "train")
    return TrainParams(require_gpu=r.bool("require_gpu", False), checkpoint_dir=r.str("checkpoint_dir", "checkpoints"))


@dataclass(frozen=True)
class Recipe:
    """How a model is trained: the keys every model section shares."""

    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    momentum: float
    nesterov: bool
    schedule: str
    warmup_epochs: float
    weight_decay: float
    label_smoothing: float
    augmentation: str
    early_stopping_patience: int | None
    restore_best: bool
    mixed_precision: bool | str  # true | false | "auto" (see tasks.precision)
    jit_compile: bool | str
    seed: int
    require_gpu: bool | None


def recipe(r: _Reader) -> Recipe:
    mixed = r._raw("mixed_precision", "auto")
    if mixed not in (True, False, "auto"):
        raise r.fail("mixed_precision", f"must be true, false or auto; got {mixed!r}")
    jit = r._raw("jit_compile", "auto")
    if jit not in (True, False, "auto"):
        raise r.fail("jit_compile", f"must be true, false or auto; got {jit!r}")
    require = r._raw("require_gpu", None)
    if require is not None and not isinstance(require, bool):
        raise r.fail("require_gpu", f"must be true, false or null; got {require!r}")
    return Recipe(
        epochs=r.int("epochs", minimum=0),
        batch_size=r.int("batch_size", minimum=1),
        optimizer=r.str("optimizer", choices=OPTIMIZERS),
        learning_rate=r.float("learning_rate", low=0.0),
        momentum=r.float("momentum", 0.9, low=0.0, high=1.0),
        nesterov=r.bool("nesterov", False),
        schedule=r.str("schedule", "constant", choices=SCHEDULES),
        warmup_epochs=r.float("warmup_epochs", 0.0, low=0.0),
        weight_decay=r.float("weight_decay", 0.0, low=0.0),
        label_smoothing=r.float("label_smoothing", 0.0, low=0.0, high=0.5),
        augmentation=r.str("augmentation", "none", choices=AUGMENTATIONS),
        early_stopping_patience=r.int("early_stopping_patience", None, minimum=1, optional=True),
        restore_best=r.bool("restore_best", True),
        mixed_precision=mixed,
        jit_compile=jit,
        seed=r.int("seed", 0, minimum=0),
        require_gpu=require,
    )


@dataclass(frozen=True)
class AlexNetParams:
    """Section ``alexnet``: architecture plus recipe."""

    variant: str
    width: float
    batch_norm: bool
    recipe: Recipe


def alexnet_params(section: dict[str, Any]) -> AlexNetParams:
    r = _Reader(section, "alexnet")
    width = r.float("width", 1.0)
    if not 0.0 < width <= 4.0:
        raise r.fail("width", f"must be in (0, 4], got {width}")
    return AlexNetParams(
        variant=r.str("variant", choices=ALEXNET_VARIANTS),
        width=width,
        batch_norm=r.bool("batch_norm", False),
        recipe=recipe(r),
    )


@dataclass(frozen=True)
class VGG16Params:
    """Section ``vgg16``: base weights, input size, head, the two fine-tuning phases, recipe."""

    weights: str  # "imagenet", "none" or a path to a weights file
    input_size: int
    dropout: float
    head_epochs: int
    unfreeze_from: str
    fine_tune_learning_rate: float
    recipe: Recipe


def vgg16_params(section: dict[str, Any]) -> VGG16Params:
    r = _Reader(section, "vgg16")
    weights = r.str("weights")
    if weights not in ("imagenet", "none"):
        path = Path(weights)
        if not path.is_file():
            raise r.fail("weights", f"is neither 'imagenet', 'none' nor an existing weights file: {weights}")
    size = r.int("input_size", 32, minimum=32)
    rec = recipe(r)
    head = r.int("head_epochs", 0, minimum=0)
    if head > rec.epochs:
        raise r.fail("head_epochs", f"({head}) cannot exceed vgg16.epochs ({rec.epochs})")
    return VGG16Params(
        weights=weights,
        input_size=size,
        dropout=r.float("dropout", 0.0, low=0.0, high=0.9),
        head_epochs=head,
        unfreeze_from=r.str("unfreeze_from", "block1", choices=VGG16_BLOCKS),
        fine_tune_learning_rate=r.float("fine_tune_learning_rate", low=0.0),
        recipe=rec,
    )


def load_train_params(path: str | Path = PARAMS_FILE) -> TrainParams:
    return train_params(load_section("train", path))


def load_alexnet_params(path: str | Path = PARAMS_FILE) -> AlexNetParams:
    return alexnet_params(load_section("alexnet", path))


def load_vgg16_params(path: str | Path = PARAMS_FILE) -> VGG16Params:
    return vgg16_params(load_section("vgg16", path))


# --------------------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class EvaluateParams:
    """Section ``evaluate``: how the test set is scored and timed."""

    batch_size: int
    latency_repeats: int
    worst_mistakes: int


def evaluate_params(section: dict[str, Any]) -> EvaluateParams:
    r = _Reader(section, "evaluate")
    return EvaluateParams(
        batch_size=r.int("batch_size", minimum=1),
        latency_repeats=r.int("latency_repeats", minimum=1),
        worst_mistakes=r.int("worst_mistakes", minimum=0),
    )


def load_evaluate_params(path: str | Path = PARAMS_FILE) -> EvaluateParams:
    return evaluate_params(load_section("evaluate", path))
