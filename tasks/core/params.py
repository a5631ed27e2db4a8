"""``params.yaml`` -> frozen pydantic models: the one place where configuration is parsed and checked.

Each stage loads its own sections (DVC tracks params per stage) before it does anything else, so a
misspelt key, a wrong type, an out-of-range value or an inconsistent pair stops it at once with a
:class:`~tasks.core.errors.ParamsError` naming the key -- one ``error:`` line, never a pydantic traceback.
Every default lives in ``params.yaml``: no field here has one, so a key the file lacks is an error too.
A key given twice is refused (as DVC refuses it), and counts a run may ask for -- epochs, batch sizes,
the image size -- have upper bounds far beyond any real run, so a slip of the keyboard cannot start a
run of a million hours.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from tasks.core.errors import ParamsError, closest
from tasks.core.paths import PARAMS

_CLASSES = 10  # CIFAR-10's (tasks.data.splits imports this module, not the other way round)


def _problem(why: str, key: str | None = None) -> PydanticCustomError:
    """An error with our own wording; ``key`` names the field a cross-field check blames."""
    return PydanticCustomError("params", "{why}", {"why": why, "key": key})


def _no_number(value: Any) -> Any:
    # Literal[True, False, "auto"] alone would take 1 and 0 (they equal True and False).
    if not isinstance(value, (bool, str)):
        raise _problem(f"must be one of true, false, auto; got {_show(value)}")
    return value


def _triple(value: Any) -> Any:
    # YAML gives a list; strict mode takes only a tuple for a tuple field.
    if not isinstance(value, list) or len(value) != 3:
        raise _problem(f"must be a list of 3 numbers, got {_show(value)}")
    return tuple(value)


Auto = Annotated[Literal[True, False, "auto"], BeforeValidator(_no_number)]  # see tasks.core.precision
Triple = Annotated[tuple[float, float, float], BeforeValidator(_triple)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]
#: Upper bounds no real run reaches (CIFAR-10 runs take tens of epochs at batch sizes in the hundreds).
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
Epochs = Annotated[int, Field(ge=1, le=MAX_EPOCHS)]
BatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH)]


class _Section(BaseModel):
    # strict: YAML already types its scalars, so a quoted "3" or a `true` where a number belongs is a
    # mistake to report, not to coerce (a float still takes an int: 1 for 1.0). No inf/nan either.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class DataParams(_Section):
    """Section ``data``: where the archive comes from and how it is split."""

    url: str
    sha256: str
    val_fraction: Annotated[float, Field(ge=0.0, le=0.5)]
    seed: Annotated[int, Field(ge=0)]
    limit_train: Annotated[int, Field(ge=20)] | None
    limit_test: Annotated[int, Field(ge=10)] | None
    download_attempts: Annotated[int, Field(ge=1, le=100)]
    download_backoff: Annotated[float, Field(ge=0.0, le=3600.0)]
    #: Seconds one download attempt may take in all, however steadily the bytes trickle in.
    download_deadline: Annotated[float, Field(gt=0.0, le=86_400.0)]

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not url.strip():
            raise _problem("must not be empty")
        return url

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, sha: str) -> str:
        sha = sha.lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise _problem(f"must be 64 hexadecimal digits, got {sha!r}")
        return sha

    @model_validator(mode="after")
    def _val_split(self) -> DataParams:
        # A subset too small for its validation share would make a stratified split of < 1 image per class.
        if self.limit_train is not None and self.val_fraction > 0:
            n_val = round(self.val_fraction * self.limit_train)
            if n_val < _CLASSES:
                raise _problem(
                    f"({self.limit_train}) leaves {n_val} validation images at val_fraction {self.val_fraction}; "
                    f"at least {_CLASSES} (one per class) are needed",
                    "limit_train",
                )
        return self


class ValidateParams(_Section):
    """Section ``validate``: the tolerances of the data expectations."""

    class_balance_tolerance: Fraction
    channel_mean: Triple
    channel_std: Triple
    channel_stats_tolerance: NonNegative
    max_constant_images: Annotated[int, Field(ge=0)]
    max_leaked_images: Annotated[int, Field(ge=0)]


class TrainParams(_Section):
    """Section ``train``: what both training stages share."""

    require_gpu: bool
    checkpoint_dir: str

    @field_validator("checkpoint_dir")
    @classmethod
    def _checkpoint_dir(cls, folder: str) -> str:
        if not folder.strip():
            raise _problem("must not be empty")
        if Path(folder).exists() and not Path(folder).is_dir():
            raise _problem(f"names a file, not a folder: {folder}")
        return folder


class Recipe(_Section):
    """How a model is trained: the keys every model section shares."""

    epochs: Epochs
    batch_size: BatchSize
    optimizer: Literal["adam", "adamw", "sgd"]
    learning_rate: NonNegative
    momentum: Fraction  # sgd only
    nesterov: bool  # sgd only
    schedule: Literal["constant", "student", "cosine", "onecycle"]
    warmup_epochs: NonNegative
    weight_decay: NonNegative
    label_smoothing: Annotated[float, Field(ge=0.0, le=0.5)]
    ema_decay: Annotated[float, Field(ge=0.0, lt=1.0)] | None  # weight averaging; null or 0 = off
    augmentation: Literal["none", "student", "student_keras", "crop_flip"]
    crop_padding: Annotated[int, Field(ge=1, le=16)]  # crop_flip: pixels of zero padding around the image
    whiten_conv1: bool  # first convolution set from training patches' covariance (tasks.model.whitening)
    # The saved model's inference (tasks.model.models.for_inference).
    test_time_augmentation: Literal["none", "flip", "flip_translate"]
    early_stopping_patience: Epochs | None
    restore_best: bool
    mixed_precision: Auto
    jit_compile: Auto
    seed: Annotated[int, Field(ge=0)]
    require_gpu: bool | None  # null: inherit train.require_gpu

    @property
    def recipe(self) -> Recipe:
        """The recipe part of a model section (the section itself: its keys are flat in params.yaml)."""
        return self

    @model_validator(mode="after")
    def _warmup(self) -> Recipe:
        if self.warmup_epochs >= self.epochs:
            raise _problem(f"({self.warmup_epochs}) must be less than epochs ({self.epochs})", "warmup_epochs")
        return self


class AlexNetParams(Recipe):
    """Section ``alexnet``: architecture plus recipe."""

    variant: Literal["seed", "paper"]
    width: Annotated[float, Field(gt=0.0, le=4.0)]
    batch_norm: bool


class VGG16Params(Recipe):
    """Section ``vgg16``: base weights, input size, head, the two fine-tuning phases, recipe."""

    weights: str  # "imagenet", "none" or a path to a weights file
    batch_norm: bool  # batch normalisation after every convolution; from random weights only
    width: Annotated[float, Field(gt=0.0, le=4.0)]  # filter multiplier; other than 1.0 from random weights only
    input_size: Annotated[int, Field(ge=32, le=1024)]  # VGG16's own is 224
    dropout: Annotated[float, Field(ge=0.0, le=0.9)]
    head_epochs: Annotated[int, Field(ge=0, le=MAX_EPOCHS)]
    unfreeze_from: Literal["block1", "block2", "block3", "block4", "block5"]
    fine_tune_learning_rate: NonNegative

    @field_validator("weights")
    @classmethod
    def _weights(cls, weights: str) -> str:
        if weights not in ("imagenet", "none") and not Path(weights).is_file():
            raise _problem(f"is neither 'imagenet', 'none' nor an existing weights file: {weights}")
        return weights

    @model_validator(mode="after")
    def _scratch_only(self) -> VGG16Params:
        # ImageNet (or file) weights belong to keras.applications.VGG16 as it is.
        for key, value, why in (
            ("batch_norm", "true" if self.batch_norm else None, "pretrained weights have no batch-norm layers"),
            ("width", f"{self.width:g}" if self.width != 1.0 else None, "pretrained weights have no other widths"),
            (
                "whiten_conv1",
                "true" if self.whiten_conv1 else None,
                "the whitening would overwrite the pretrained block1_conv1",
            ),
        ):
            if value and self.weights != "none":
                raise _problem(f"{value} needs vgg16.weights: none (got {self.weights!r}): {why}", key)
        return self

    @model_validator(mode="after")
    def _phases(self) -> VGG16Params:
        if self.head_epochs > self.epochs:
            raise _problem(f"({self.head_epochs}) cannot exceed vgg16.epochs ({self.epochs})", "head_epochs")
        # Each phase runs its own schedule, warmup included (tasks/train_vgg16.py).
        for phase, epochs in (("head", self.head_epochs), ("fine-tune", self.epochs - self.head_epochs)):
            if 0 < epochs <= self.warmup_epochs:
                why = f"({self.warmup_epochs}) must be less than the {epochs} epochs of the {phase} phase"
                raise _problem(why, "warmup_epochs")
        return self


class EvaluateParams(_Section):
    """Section ``evaluate``: how the test set is scored and timed."""

    batch_size: BatchSize
    latency_repeats: Annotated[int, Field(ge=1, le=100_000)]
    worst_mistakes: Annotated[int, Field(ge=0, le=1_000)]


# --------------------------------------------------------------------------- reading and errors

S = TypeVar("S", bound=_Section)


def _show(value: Any) -> str:
    """A value as the person wrote it in YAML (true, null), strings quoted."""
    if value is None:
        return "null"
    return ("true" if value else "false") if isinstance(value, bool) else repr(value)


def _choices(model: type[_Section], key: str) -> str:
    annotation = model.model_fields[key].annotation
    while get_origin(annotation) is not Literal and get_args(annotation):
        annotation = get_args(annotation)[0]  # Annotated[Literal[...], ...]
    return ", ".join(_show(c) if not isinstance(c, str) else c for c in get_args(annotation))


def _explain(model: type[_Section], error: ErrorDetails) -> tuple[str, str]:
    """(key, problem) for one pydantic error, worded like the rest of the project's messages."""
    kind, ctx, got = error["type"], error.get("ctx") or {}, _show(error["input"])
    key = str(error["loc"][0]) if error["loc"] else str(ctx.get("key"))
    if kind == "params":
        return key, str(ctx["why"])
    if kind == "extra_forbidden":
        near = closest(key, model.model_fields)
        return key, "is not a known key" + (f" (did you mean '{near}'?)" if near else "")
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return key, f"must be {bounds[kind]} {limit}, got {got}"
    field = model.model_fields.get(key)
    null = " (or null)" if field is not None and type(None) in get_args(field.annotation) else ""
    words = {
        "missing": "is missing",
        "int_type": f"must be an integer{null}, got {got}",
        "float_type": f"must be a finite number{null}, got {got}",
        "finite_number": f"must be a finite number, got {got}",
        "bool_type": f"must be true or false{null}, got {got}",
        "string_type": f"must be a string, got {got}"
        + (" (YAML reads it as a number: put it in quotes)" if isinstance(error["input"], (int, float)) else ""),
        "literal_error": f"must be one of {_choices(model, key)}; got {got}",
    }
    return key, words.get(kind) or f"{error['msg'][0].lower()}{error['msg'][1:]}, got {got}"


def read_params(path: str | Path = PARAMS) -> Any:
    """The params file parsed; a :class:`ParamsError` saying what is wrong where it is missing, is not
    YAML or names a key twice."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        refuse_duplicate_keys(path, yaml.compose(text, Loader=yaml.SafeLoader))
        return yaml.safe_load(text)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None


def load_section(name: str, path: str | Path = PARAMS) -> dict[str, Any]:
    """Read one top-level section of the params file as a plain dict."""
    return section_of(read_params(path), name, path)


def section_of(doc: Any, name: str, path: str | Path = PARAMS) -> dict[str, Any]:
    """Section ``name`` of ``doc``, a parsed params file at ``path``; a :class:`ParamsError` saying what is
    wrong where it is missing or not a mapping."""
    if not isinstance(doc, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    section = doc.get(name)
    if not isinstance(section, dict):
        near = closest(name, (k for k in doc if k not in SECTIONS))
        hint = f" (is '{near}' a misspelling?)" if near else ""
        raise ParamsError(f"{path}: section '{name}' is missing or not a mapping{hint}")
    return section


def refuse_duplicate_keys(path: Path, node: yaml.Node | None, where: str = "") -> None:
    """Refuse a mapping that names a key twice: YAML loaders keep the last value without a word."""
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            refuse_duplicate_keys(path, item, where)
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = f"{where}{key_node.value}"
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ParamsError(
                f"{path}: '{key}' is given twice (lines {seen[key]} and {line}); "
                "keep one (YAML would silently take the last, and DVC refuses the file)"
            )
        seen[key] = line
        refuse_duplicate_keys(path, value_node, f"{key}.")


#: Which model checks each section of params.yaml.
SECTIONS: dict[str, type[_Section]] = {
    "data": DataParams,
    "validate": ValidateParams,
    "train": TrainParams,
    "alexnet": AlexNetParams,
    "vgg16": VGG16Params,
    "evaluate": EvaluateParams,
}


#: The section each model checks.
_NAMES: dict[type[_Section], str] = {model: name for name, model in SECTIONS.items()}


def parse(model: type[S], section: dict[str, Any]) -> S:
    """``section`` (one section of params.yaml, as a dict) checked by ``model``; the first problem becomes
    a :class:`ParamsError` naming ``section.key``."""
    try:
        return model.model_validate(section)
    except ValidationError as exc:
        # An unknown key first: a misspelling also makes the intended key "missing", and the
        # suggestion says more than that does.
        first = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        key, problem = _explain(model, first)
        raise ParamsError(f"params.yaml: '{_NAMES[model]}.{key}' {problem}") from None


def check_sections(doc: Any, names: Iterable[str], path: str | Path = PARAMS) -> None:
    """Check each section of ``doc`` (a parsed params file at ``path``) named in ``names`` as the stage
    reading it will; the first problem as a :class:`ParamsError`. Names no model checks are passed over."""
    for name in (n for n in names if n in SECTIONS):
        parse(SECTIONS[name], section_of(doc, name, path))


def load(model: type[S], path: str | Path = PARAMS) -> S:
    """The section of the params file at ``path`` that ``model`` checks, e.g. ``load(AlexNetParams)``."""
    return parse(model, load_section(_NAMES[model], path))
