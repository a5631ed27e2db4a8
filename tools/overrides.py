"""``python -m tools.overrides FILE``: turn a params overlay (YAML shaped like params.yaml) into ``-S`` flags;
the rule by which ``dvc exp run -S`` accepts or refuses an override, and the params it leaves, so the flows
can refuse a bad override or value before anything runs.

The named settings in ``configs/`` (the student's recipe, the quick CPU run, ...) are overlays
on ``params.yaml``. ``dvc exp run $(python -m tools.overrides configs/quick-cpu.yaml)`` runs one
as a named, reviewable experiment; the benchmarks read the same files, so a documented setting
and a measured one cannot drift apart.
"""

from __future__ import annotations

import copy
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tasks.core.errors import ParamsError, closest


def load_overlay(path: str | Path) -> dict[str, dict[str, Any]]:
    try:
        overlay = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ParamsError(f"{path}: cannot read the overlay: {exc}") from None
    if not isinstance(overlay, dict) or not all(isinstance(v, dict) for v in overlay.values()):
        raise ParamsError(f"{path}: expected sections of key: value pairs, like params.yaml")
    return overlay


def flags(overlay: dict[str, dict[str, Any]]) -> list[str]:
    """``{"alexnet": {"width": 0.5}}`` -> ``["-S", "alexnet.width=0.5"]`` (values in YAML syntax)."""
    out: list[str] = []
    for section, values in overlay.items():
        for key, value in values.items():
            text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()
            out += ["-S", f"{section}.{key}={text}"]
    return out


def merged(base: dict[str, Any], overlay: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``base`` params with the overlay's keys replaced (a new dict; ``base`` is not changed)."""
    out = {name: dict(section) if isinstance(section, dict) else section for name, section in base.items()}
    for name, values in overlay.items():
        out.setdefault(name, {}).update(values)
    return out


def split_override(item: str) -> tuple[str, str, str]:
    """``"sub/params.yaml:+a.b=2"`` -> ``("sub/params.yaml", "+a.b", "2")``; the file defaults to params.yaml."""
    key, _, value = item.partition("=")
    path, sep, key = key.rpartition(":")
    return (path if sep else "params.yaml"), key.strip(), value


def override_files(overrides: Sequence[str]) -> list[str]:
    """The params files that ``-S`` ``overrides`` change, in first-named order."""
    return list(dict.fromkeys(split_override(o)[0] for o in overrides))


def override_problem(params_text: str | None, item: str) -> str | None:
    """Why ``dvc exp run -S item`` would refuse to change a params file holding ``params_text``, by
    Hydra's rule (``key=value`` changes an existing key, ``+key`` adds one, ``++key`` either, ``~key``
    removes one); None when it would accept it."""
    path, key, value = split_override(item)
    if "=" not in item and not key.startswith("~"):
        return f"{item!r} is not KEY=VALUE"
    try:
        node: Any = yaml.safe_load(params_text or "") or {}
    except yaml.YAMLError as exc:
        return f"{path} is not valid YAML: {exc}"
    bare = key.lstrip("+~")
    parts = bare.split(".")
    missing: tuple[int, Any] | None = None  # the first part not there, and the mapping it is not in
    for i, part in enumerate(parts):
        if missing is None and (not isinstance(node, dict) or part not in node):
            missing = (i, node)
        node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
    if key.startswith("++"):
        return None
    if key.startswith("+") and node is not KeyError:
        return f"could not add {bare!r} to {path}: it is already there (override it with {bare}={value})"
    if not key.startswith("+") and node is KeyError:
        i, there = missing or (0, None)
        near = closest(parts[i], there) if isinstance(there, dict) else None
        meant = ".".join([*parts[:i], str(near), *parts[i + 1 :]])
        hint = f"did you mean '{meant}'?" if near else f"add it with +{bare}={value}"
        return f"could not override {bare!r} in {path}: no such key ({hint})"
    return None


def check_overrides(read: Callable[[str], str | None], overrides: Sequence[str]) -> list[str]:
    """Every problem :func:`override_problem` finds, reading each params file through ``read``."""
    texts = {path: read(path) for path in override_files(overrides)}
    return [p for item in overrides if (p := override_problem(texts[split_override(item)[0]], item))]


def applied(doc: dict[str, Any], overrides: Sequence[str], file: str = "params.yaml") -> dict[str, Any]:
    """``doc``, the parsed ``file``, as ``dvc exp run -S`` with ``overrides`` leaves it (a new dict; the
    overrides of other files are passed over)."""
    out = copy.deepcopy(doc)
    for item in overrides:
        path, key, value = split_override(item)
        if path != file:
            continue
        *parents, last = key.lstrip("+~").split(".")
        node: Any = out
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue  # a key below a plain value: check_overrides says why DVC refuses it
        if key.startswith("~"):
            node.pop(last, None)
        else:
            node[last] = yaml.safe_load(value) if value.strip() else None
    return out


def main() -> None:
    if len(sys.argv) != 2:
        raise ParamsError("usage: python -m tools.overrides configs/NAME.yaml")
    found = flags(load_overlay(sys.argv[1]))
    params = Path("params.yaml")
    if params.is_file() and (problems := check_overrides(lambda _: params.read_text(), found[1::2])):
        raise ParamsError(f"{sys.argv[1]}: {'; '.join(problems)}")
    print(" ".join(shlex.quote(f) for f in found))


if __name__ == "__main__":
    from tasks.core.cli import run_stage

    run_stage(main)
