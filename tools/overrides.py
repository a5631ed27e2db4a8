"""``python -m tools.overrides FILE``: turn a params overlay (YAML shaped like params.yaml) into ``-S`` flags.

The named settings in ``configs/`` (the student's recipe, the quick CPU run, ...) are overlays
on ``params.yaml``. ``dvc exp run $(python -m tools.overrides configs/quick-cpu.yaml)`` runs one
as a named, reviewable experiment; the benchmarks read the same files, so a documented setting
and a measured one cannot drift apart.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from tasks.core.errors import ParamsError


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


def main() -> None:
    if len(sys.argv) != 2:
        raise ParamsError("usage: python -m tools.overrides configs/NAME.yaml")
    print(" ".join(shlex.quote(f) for f in flags(load_overlay(sys.argv[1]))))


if __name__ == "__main__":
    from tasks.core.cli import run_stage

    run_stage(main)
