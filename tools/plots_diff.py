"""``python -m tools.plots_diff [REV ...]``: ``dvc plots diff`` rendered offline to PNGs and one HTML page.

DVC's own ``dvc plots diff`` writes an ``index.html`` that loads Vega from a CDN, so it is blank
without internet. This asks DVC for the same plots as JSON (``--json``: Vega-Lite specs with
their data inline, one colour per revision) and renders each with vl-convert, which bundles
Vega. The page embeds the images, so it is one self-contained file.

    python -m tools.plots_diff                  # workspace vs HEAD
    python -m tools.plots_diff HEAD~1 HEAD      # two commits
    python -m tools.plots_diff exp-a1b2c exp-d3e4f --out reports/plots_diff
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tasks.core.atomic import atomic_path, write_text
from tasks.core.cli import run_stage
from tasks.core.errors import StageError
from tasks.reporting import figures, templating


def dvc_plots_json(revisions: list[str]) -> dict[str, list[dict[str, Any]]]:
    """What ``dvc plots diff --json`` reports: plot id -> rendered Vega-Lite specs."""
    cmd = [sys.executable, "-m", "dvc", "plots", "diff", "--json", *revisions]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StageError(f"dvc plots diff {' '.join(revisions)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    try:
        shown = json.loads(proc.stdout)
    except ValueError:
        shown = None
    if not isinstance(shown, dict):
        raise StageError(f"dvc plots diff --json gave output this command cannot read: {proc.stdout[:200]!r}")
    return shown.get("data") or {}  # DVC prints {} where it finds no plots at all


def file_name(plot_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", plot_id).strip("_") + ".png"


def render(plots: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str, list[str], bytes]]:
    """(plot id, file name, revisions, PNG) for every Vega plot DVC returned."""
    rendered = []
    for plot_id, entries in plots.items():
        for entry in entries:
            if entry.get("type") != "vega":
                continue
            spec = entry["content"]
            spec.setdefault("title", plot_id)
            rendered.append((plot_id, file_name(plot_id), entry.get("revisions", []), figures.render_png(spec)))
    return rendered


def page(rendered: list[tuple[str, str, list[str], bytes]], revisions: list[str]) -> str:
    """The HTML page (``tools/templates/plots_diff.html.j2``) showing every plot, its images embedded."""
    shown = ", ".join(revisions) or "workspace vs HEAD"
    return templating.render("plots_diff.html.j2", package="tools", plots=rendered, shown=shown)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render `dvc plots diff` offline to PNG files and one HTML page.")
    parser.add_argument("revisions", nargs="*", help="git revisions or experiment names (default: workspace vs HEAD)")
    parser.add_argument("--out", type=Path, default=Path("reports/plots_diff"), help="output folder")
    args = parser.parse_args(argv)
    rendered = render(dvc_plots_json(args.revisions))
    if not rendered:
        where = ", ".join(args.revisions) if args.revisions else "the workspace or HEAD"
        raise StageError(
            f"dvc plots diff found no plots in {where}: the training stages have not run there, or their "
            "results were not committed (git add dvc.lock dvclive; git commit) or fetched (dvc pull)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    for _, name, _, png in rendered:
        with atomic_path(args.out / name) as tmp:
            tmp.write_bytes(png)
    write_text(args.out / "index.html", page(rendered, args.revisions))
    print(f"wrote {len(rendered)} plots to {args.out}/ (open {args.out / 'index.html'})")


if __name__ == "__main__":
    run_stage(main)
