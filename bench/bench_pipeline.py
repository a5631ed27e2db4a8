"""The end-to-end pipeline: `dvc repro` with nothing to do, and the data stages run by DVC vs by hand.

In a scratch git + DVC repository holding this project, pointed at the real archive:

* ``baseline``: the stage scripts run one after the other by hand (``python -m tasks.<stage>``),
  which always recompute;
* ``dvc repro`` of the same stages the first time (same work plus DVC's hashing and caching);
* ``dvc repro`` again with nothing changed (what a scheduled run costs when nothing changed);
* ``dvc status``.

    python bench/bench_pipeline.py [--archive PATH] [--stages download preprocess validate]

Writes bench/results/pipeline.json. (The whole quick run, training included, is timed by
`make quick`; see docs/benchmarks.md.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import DEFAULT_ARCHIVE, REPO, describe_machine, machine, table, write_result

REAL_SHA256 = "74d36e93f7daa4ade4876a51e01bcd2ab1c202d05eb6cb36d9105e3144bc10c4"


def sh(cmd: list[str], cwd: Path) -> float:
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        DVC_NO_ANALYTICS="1",
        GX_ANALYTICS_ENABLED="false",
    )
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return round(time.perf_counter() - start, 2)


def scratch_repo(root: Path, archive: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    for name in ("tasks", "dvc.yaml", "params.yaml", ".dvcignore"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update(url=str(archive), sha256=REAL_SHA256)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q"], repo)
    sh([sys.executable, "-m", "dvc", "init", "-q"], repo)
    return repo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    ap.add_argument("--stages", nargs="+", default=["download", "preprocess", "validate"])
    args = ap.parse_args()
    host = machine()
    print(describe_machine(host), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = scratch_repo(Path(tmp), args.archive)
        by_hand = sum(sh([sys.executable, "-m", f"tasks.{s}"], repo) for s in args.stages)
        rows.append({"what": f"baseline: {', '.join(args.stages)} by hand", "seconds": round(by_hand, 2)})
        for s in ("data", "reports"):
            shutil.rmtree(repo / s, ignore_errors=True)
        dvc = [sys.executable, "-m", "dvc"]
        last = args.stages[-1]
        rows.append({"what": f"dvc repro {last} (first run)", "seconds": sh([*dvc, "repro", last], repo)})
        for i in range(3):
            rows.append(
                {"what": f"dvc repro {last} (nothing changed, run {i + 1})", "seconds": sh([*dvc, "repro", last], repo)}
            )
        rows.append({"what": "dvc status", "seconds": sh([*dvc, "status"], repo)})
    print(table(rows, ["what", "seconds"]))
    write_result("pipeline", {"machine": host, "rows": rows})


if __name__ == "__main__":
    main()
