"""Sweep files (``sweeps/*.yaml``; docs/sweeps.md documents every key): a grid or a list of params
overrides, times a number of seeds, expanded into named DVC experiments. Experiment
``<name>-<point>-s<seed>`` is ``dvc exp run -n <that> -S <configs> -S <params> -S <set_params> -S
<point params> -S <seed params>=<seed>``; later overrides win. No Prefect here.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from tasks.core.errors import ParamsError, closest
from tools.overrides import flags, load_overlay

DEFAULT_SEED_PARAMS = ("alexnet.seed", "vgg16.seed")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class SweepError(ValueError):
    """The sweep definition is malformed; the message says where."""


class _Point(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    params: dict[str, Any] = {}


class SweepFile(BaseModel):
    """A sweep file as written."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    description: str = ""
    configs: list[str] = []
    params: dict[str, Any] = {}
    grid: dict[str, Any] = {}
    points: list[_Point] = []
    seeds: int | list[int] | None = None
    seed_params: list[str] = list(DEFAULT_SEED_PARAMS)
    stages: list[str] | None = None
    compare: list[str] | None = None

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: int | list[int] | None) -> int | list[int] | None:
        if isinstance(seeds, int) and seeds < 1:
            raise ValueError("seeds must be at least 1")
        if isinstance(seeds, list) and (not seeds or len(set(seeds)) != len(seeds)):
            raise ValueError(f"seeds must be distinct integers, and some: {seeds} repeat or are none")
        return seeds


@dataclass(frozen=True)
class Experiment:
    """One ``dvc exp run``: a point at one seed."""

    name: str
    point: str
    seed: int | None
    #: dotted key -> value for everything it sets (configs, params, the point's, the seed's; later win)
    params: dict[str, Any] = field(hash=False)
    #: the point's params and the seed params: what tells it apart from the sweep's others
    own: dict[str, Any] = field(hash=False)

    @property
    def overrides(self) -> list[str]:
        """The ``-S`` values, one per param."""
        return to_overrides(self.params)


@dataclass
class Sweep:
    name: str
    description: str
    base: dict[str, Any]
    points: dict[str, dict[str, Any]]  # point name -> its params, in file order
    seeds: list[int | None]
    seed_params: list[str]
    stages: list[str] | None
    compare: list[str] | None

    def experiments(self) -> list[Experiment]:
        found = []
        for (point, params), seed in itertools.product(self.points.items(), self.seeds):
            own = {**params, **({key: seed for key in self.seed_params} if seed is not None else {})}
            name = slug(f"{self.name}-{point}" + (f"-s{seed}" if seed is not None else ""))
            found.append(Experiment(name, point, seed, {**self.base, **own}, own))
        return found


def slug(text: str) -> str:
    """A name that is a valid git ref component (DVC experiment names are git refs)."""
    out = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", ".", _UNSAFE.sub("-", str(text)).strip(".-")))
    return out.removesuffix(".lock") or "x"


def value_text(value: Any) -> str:
    """How a value reads in a name or a table: YAML flow style (``0.05``, ``seed``, ``null``, ``[1, 2]``)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def point_name(params: Mapping[str, Any]) -> str:
    """``{"alexnet.variant": "paper", "alexnet.learning_rate": 0.05}`` -> ``variant-paper_learning_rate-0.05``."""
    return slug("_".join(f"{key.rsplit('.', 1)[-1]}-{value_text(value)}" for key, value in params.items()))


def flatten(overlay: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Sections of key: value (like params.yaml) and/or dotted keys -> ``{"section.key": value}``."""
    out: dict[str, Any] = {}
    for key, value in overlay.items():
        if "." in key.split(":", 1)[-1]:
            out[key] = value
        elif isinstance(value, Mapping):
            out.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            raise SweepError(
                f"{where}: {key!r} is a section name; give it key: value pairs, or a dotted key such as {key}.some_key"
            )
    return out


def to_overrides(params: Mapping[str, Any]) -> list[str]:
    """``{"alexnet.width": 0.5}`` -> ``["alexnet.width=0.5"]``, values in YAML syntax exactly as
    ``python -m tools.overrides`` writes them."""
    return [flags({key.rpartition(".")[0]: {key.rpartition(".")[2]: value}})[1] for key, value in params.items()]


def _problem(error: Any) -> str:
    """One pydantic error of a sweep file in words; an unknown key with the known one it resembles."""
    if error["type"] != "extra_forbidden":
        return str(error["msg"])
    point = len(error["loc"]) > 1  # points[i].key, or a top-level key
    near = closest(str(error["loc"][-1]), (_Point if point else SweepFile).model_fields)
    return f"not a key of a {'point' if point else 'sweep file'}" + (f" (did you mean '{near}'?)" if near else "")


def parse(definition: Any, repo: Path, source: str = "<inline>", extra_overrides: Iterable[str] = ()) -> Sweep:
    """A sweep from its parsed YAML; ``configs`` paths are relative to ``repo``. ``extra_overrides``
    (``-S`` syntax, ``data.url=...``) join every experiment after the file's own params."""
    try:
        spec = SweepFile.model_validate(definition)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the file'}: {_problem(e)}" for e in exc.errors())
        raise SweepError(f"{source}: {problems}") from None
    name = spec.name or (Path(source).stem if source != "<inline>" else None)
    if not name:
        raise SweepError(f"{source}: give the sweep a name")
    base: dict[str, Any] = {}
    for config in spec.configs:
        try:
            base.update(flatten(load_overlay(repo / config), config))
        except ParamsError as exc:  # a missing or malformed overlay
            raise SweepError(f"{source}: configs: {exc}") from None
    base.update(flatten(spec.params, f"{source}: params"))
    for text in extra_overrides:
        key, sep, value = text.partition("=")
        if not sep:
            raise SweepError(f"set_params: {text!r} is not KEY=VALUE")
        base[key.strip().split(":", 1)[-1]] = yaml.safe_load(value) if value.strip() else None
    points: dict[str, dict[str, Any]] = {}
    axes = flatten(spec.grid, f"{source}: grid")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{source}: grid: {key} needs a non-empty list of values, got {values!r}")
    combos = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] if axes else []
    listed = [(p.name, flatten(p.params, f"{source}: points[{i}]")) for i, p in enumerate(spec.points)]
    for given, params in [(None, c) for c in combos] + listed:
        point = slug(given) if given else point_name(params) or f"point{len(points)}"
        if point in points:
            raise SweepError(f"{source}: two points share the name {point}; give the points distinct names")
        points[point] = params
    seeds = list(range(1, spec.seeds + 1)) if isinstance(spec.seeds, int) else spec.seeds or [None]
    fields = {"description": spec.description.strip(), "stages": spec.stages, "compare": spec.compare}
    return Sweep(
        slug(name), base=base, points=points or {"base": {}}, seeds=seeds, seed_params=spec.seed_params, **fields
    )


def load(path: str | Path, repo: Path, extra_overrides: Iterable[str] = ()) -> Sweep:
    """Read a sweep file (a path relative to ``repo`` or absolute)."""
    try:
        definition = yaml.safe_load((repo / path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SweepError(f"{path}: cannot read the sweep file: {exc}") from None
    return parse(definition, repo, str(path), extra_overrides)
