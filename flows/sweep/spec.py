"""Sweep definition files (``sweeps/*.yaml``): a grid or a list of params overrides, times a
number of seeds, expanded into named DVC experiments. No Prefect here.

A sweep file (docs/sweeps.md documents every key)::

    name: alexnet-variants            # experiment names start with it
    configs: [configs/quick-cpu-half.yaml]   # params overlays applied to every experiment
    params:                           # more overrides for every experiment (sections or dotted keys)
      data: {limit_train: 10000}
    grid:                             # every combination of these values is a point
      alexnet.variant: [seed, paper]
    points:                           # and/or points spelled out, each with a name
      - {name: wide, params: {alexnet.width: 0.5}}
    seeds: [1, 2, 3]                  # or a count: 3 == [1, 2, 3]; each point runs once per seed
    seed_params: [alexnet.seed]       # the params a seed sets (default: alexnet.seed, vgg16.seed)
    stages: [evaluate]                # `dvc exp run` targets (default: the whole pipeline)
    compare: [alexnet]                # models whose test metrics the table compares (default: all)

Experiment ``<name>-<point>-s<seed>``: ``dvc exp run -n <that> -S <configs> -S <params> -S <point
params> -S <seed params>=<seed>``; later overrides win.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tools.overrides import flags, load_overlay

DEFAULT_SEED_PARAMS = ("alexnet.seed", "vgg16.seed")
KEYS = {"name", "description", "configs", "params", "grid", "points", "seeds", "seed_params", "stages", "compare"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class SweepError(ValueError):
    """The sweep definition is malformed; the message says where."""


@dataclass(frozen=True)
class Point:
    """One combination of params; its seeds make a group whose mean and spread the table reports."""

    name: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Experiment:
    """One ``dvc exp run``: a point at one seed."""

    name: str
    point: str
    seed: int | None
    #: the ``-S`` values: one per param, with the value the last layer gives it (configs, then
    #: params, then the point's params, then the seed params)
    overrides: tuple[str, ...]
    #: dotted key -> value for everything this experiment sets (later overrides win)
    params: dict[str, Any] = field(hash=False)
    #: the point's own params plus the seed params: what tells it apart from the sweep's others
    own: dict[str, Any] = field(hash=False)


@dataclass
class Sweep:
    name: str
    description: str
    base: dict[str, Any]
    points: list[Point]
    seeds: list[int | None]
    seed_params: list[str]
    stages: list[str] | None
    compare: list[str] | None
    source: str = "<inline>"

    def experiments(self) -> list[Experiment]:
        found: list[Experiment] = []
        for point in self.points:
            for seed in self.seeds:
                own = dict(point.params)
                if seed is not None:
                    own.update({key: seed for key in self.seed_params})
                params = {**self.base, **own}
                name = experiment_name(self.name, point.name, seed)
                found.append(
                    Experiment(
                        name=name,
                        point=point.name,
                        seed=seed,
                        overrides=tuple(to_overrides(params)),
                        params=params,
                        own=own,
                    )
                )
        names = [e.name for e in found]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SweepError(
                f"{self.source}: two experiments would share the name(s) {', '.join(duplicates)}; "
                "give the points distinct names"
            )
        return found


# -- names -------------------------------------------------------------------------------------------


def slug(text: str) -> str:
    """A name that is a valid git ref component (DVC experiment names are git refs)."""
    out = _UNSAFE.sub("-", str(text)).strip(".-")
    out = re.sub(r"\.{2,}", ".", out)
    out = re.sub(r"-{2,}", "-", out)
    return out.removesuffix(".lock") or "x"


def value_text(value: Any) -> str:
    """How a value reads in a name or a table: YAML flow style (``0.05``, ``seed``, ``null``, ``[1, 2]``)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def point_name(params: Mapping[str, Any]) -> str:
    """``{"alexnet.variant": "paper", "alexnet.learning_rate": 0.05}`` -> ``variant-paper_learning_rate-0.05``."""
    return slug("_".join(f"{key.rsplit('.', 1)[-1]}-{value_text(value)}" for key, value in params.items()))


def experiment_name(sweep: str, point: str, seed: int | None) -> str:
    return slug(f"{sweep}-{point}" + (f"-s{seed}" if seed is not None else ""))


# -- overrides ---------------------------------------------------------------------------------------


def flatten(overlay: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Sections of key: value (like params.yaml) and/or dotted keys -> ``{"section.key": value}``."""
    out: dict[str, Any] = {}
    for key, value in overlay.items():
        if not isinstance(key, str) or not key:
            raise SweepError(f"{where}: keys must be param names, got {key!r}")
        if "." in key.split(":", 1)[-1]:
            out[key] = value
        elif isinstance(value, Mapping):
            for inner, v in value.items():
                out[f"{key}.{inner}"] = v
        else:
            raise SweepError(
                f"{where}: {key!r} is a section name; give it key: value pairs, or write it "
                f"as a dotted key such as {key}.some_key"
            )
    return out


def to_overrides(params: Mapping[str, Any]) -> list[str]:
    """``{"alexnet.width": 0.5}`` -> ``["alexnet.width=0.5"]``: ``dvc exp run -S`` values, the
    values written in YAML syntax exactly as ``python -m tools.overrides`` writes them."""
    out: list[str] = []
    for key, value in params.items():
        section, _, rest = key.rpartition(".")
        out.append(flags({section: {rest: value}})[1])
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"params.yaml:alexnet.width=0.5"`` -> ``("alexnet.width", 0.5)`` (file prefix dropped)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SweepError(f"override {text!r} is not KEY=VALUE")
    key = key.strip()
    if ":" in key:
        key = key.split(":", 1)[1]
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def same_value(a: Any, b: Any) -> bool:
    """Params equality as DVC and YAML see it: 1 == 1.0, 0.0001 == 1e-4, lists item by item."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, str) and not isinstance(b, str) and b is not None:
        try:
            return same_value(yaml.safe_load(a), b)
        except yaml.YAMLError:
            return False
    return a == b


# -- loading -----------------------------------------------------------------------------------------


def _seeds(raw: Any, where: str) -> list[int | None]:
    if raw is None:
        return [None]
    if isinstance(raw, bool):
        raise SweepError(f"{where}: seeds must be a count or a list of integers")
    if isinstance(raw, int):
        if raw < 1:
            raise SweepError(f"{where}: seeds must be at least 1")
        return list(range(1, raw + 1))
    if isinstance(raw, list) and raw and all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        if len(set(raw)) != len(raw):
            raise SweepError(f"{where}: seeds repeat: {raw}")
        return list(raw)
    raise SweepError(f"{where}: seeds must be a count or a non-empty list of integers, got {raw!r}")


def _names(raw: Any, what: str, where: str) -> list[str] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise SweepError(f"{where}: {what} must be a list of names")
    return list(raw)


def _grid_points(grid: Any, where: str) -> list[Point]:
    if not isinstance(grid, Mapping) or not grid:
        raise SweepError(f"{where}: grid must map param names to lists of values")
    axes = flatten(grid, f"{where}: grid")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: grid: {key} needs a non-empty list of values, got {values!r}")
    keys = list(axes)
    return [
        Point(point_name(dict(zip(keys, combo))), dict(zip(keys, combo)))
        for combo in itertools.product(*(axes[k] for k in keys))
    ]


def _listed_points(points: Any, where: str) -> list[Point]:
    if not isinstance(points, list) or not points:
        raise SweepError(f"{where}: points must be a non-empty list")
    found = []
    for i, entry in enumerate(points):
        here = f"{where}: points[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("params", {}), Mapping):
            raise SweepError(f"{here}: expected name: ... and params: {{key: value, ...}}")
        unknown = set(entry) - {"name", "params"}
        if unknown:
            raise SweepError(f"{here}: unknown key(s) {', '.join(sorted(unknown))}; a point has name and params")
        params = flatten(entry.get("params") or {}, here)
        name = entry.get("name")
        if name is not None and not isinstance(name, (str, int, float)):
            raise SweepError(f"{here}: name must be text")
        found.append(Point(slug(str(name)) if name is not None else (point_name(params) or f"point{i}"), params))
    return found


def parse(
    definition: Mapping[str, Any], repo: Path, source: str = "<inline>", extra_overrides: Iterable[str] = ()
) -> Sweep:
    """A sweep from its parsed YAML; ``configs`` paths are relative to ``repo``. ``extra_overrides``
    (``-S`` syntax, e.g. ``data.url=...``) join every experiment after the file's own params."""
    if not isinstance(definition, Mapping):
        raise SweepError(f"{source}: a sweep file is a mapping of {', '.join(sorted(KEYS))}")
    unknown = set(definition) - KEYS
    if unknown:
        raise SweepError(
            f"{source}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; known: {', '.join(sorted(KEYS))}"
        )
    name = definition.get("name") or (Path(source).stem if source != "<inline>" else None)
    if not name or not isinstance(name, str):
        raise SweepError(f"{source}: give the sweep a name")
    base: dict[str, Any] = {}
    for config in _names(definition.get("configs"), "configs", source) or []:
        try:
            base.update(flatten(load_overlay(repo / config), config))
        except Exception as exc:  # ParamsError: missing or malformed overlay
            raise SweepError(f"{source}: configs: {exc}") from None
    params = definition.get("params") or {}
    if not isinstance(params, Mapping):
        raise SweepError(f"{source}: params must map param names to values")
    base.update(flatten(params, f"{source}: params"))
    for text in extra_overrides:
        key, value = parse_override(text)
        base[key] = value
    points: list[Point] = []
    if definition.get("grid") is not None:
        points += _grid_points(definition["grid"], source)
    if definition.get("points") is not None:
        points += _listed_points(definition["points"], source)
    if not points:
        points = [Point("base", {})]
    seed_params = _names(definition.get("seed_params"), "seed_params", source) or list(DEFAULT_SEED_PARAMS)
    return Sweep(
        name=slug(name),
        description=str(definition.get("description") or "").strip(),
        base=base,
        points=points,
        seeds=_seeds(definition.get("seeds"), source),
        seed_params=seed_params,
        stages=_names(definition.get("stages"), "stages", source),
        compare=_names(definition.get("compare"), "compare", source),
        source=source,
    )


def load(path: str | Path, repo: Path, extra_overrides: Iterable[str] = ()) -> Sweep:
    """Read a sweep file (a path relative to ``repo`` or absolute)."""
    file = Path(path) if Path(path).is_absolute() else repo / path
    try:
        definition = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SweepError(f"{path}: cannot read the sweep file: {exc}") from None
    return parse(definition, repo, str(path), extra_overrides)
