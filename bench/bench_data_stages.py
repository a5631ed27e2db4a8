"""Benchmark the preprocess and validate stages on the real archive: wall time and peak RSS.

Each stage runs as its own process (as DVC runs it) in a scratch folder; the peak RSS is that
process's own, from ``os.wait4``. Baseline for
the preprocess stage: a plain ``keras.datasets.cifar10``-style loader (``pickle.load`` of every
batch and ``np.concatenate``), the way the student's notebook read the data.

    python bench/bench_data_stages.py [--archive PATH] [--repeat N]

Prints a table and writes ``bench/results/data_stages.json``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_ARCHIVE, REPO, describe_machine, machine, write_result  # noqa: E402

REAL_SHA256 = "74d36e93f7daa4ade4876a51e01bcd2ab1c202d05eb6cb36d9105e3144bc10c4"

BASELINE = """
import pickle, tarfile, numpy as np
with tarfile.open({archive!r}) as tar:
    tar.extractall({folder!r}, filter="data")
xs, ys = [], []
for name in [f"data_batch_{{i}}" for i in range(1, 6)] + ["test_batch"]:
    with open({folder!r} + "/cifar-10-batches-py/" + name, "rb") as fh:
        d = pickle.load(fh, encoding="bytes")
    xs.append(d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)); ys.append(d[b"labels"])
np.savez({folder!r} + "/all.npz", x=np.concatenate(xs), y=np.concatenate(ys))
"""


def timed(cmd: list[str], cwd: Path) -> dict[str, float]:
    """Run ``cmd`` as a child process; its wall time and its own peak RSS (``wait4`` rusage)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), GX_ANALYTICS_ENABLED="false")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode() if proc.stderr else ''}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    host = machine()
    print(describe_machine(host), flush=True)
    rows: list[dict[str, object]] = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            params = (REPO / "params.yaml").read_text()
            params = params.replace(
                "url: https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", f"url: {args.archive}"
            )
            params = params.replace(
                "sha256: 6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", f"sha256: {REAL_SHA256}"
            )
            (work / "params.yaml").write_text(params)
            py = sys.executable
            steps = [
                ("download (local copy)", [py, "-m", "tasks.download"]),
                (
                    "baseline: extract + pickle.load + concatenate",
                    [py, "-c", BASELINE.format(archive=str(args.archive), folder=str(work / "baseline"))],
                ),
                ("preprocess", [py, "-m", "tasks.preprocess"]),
                ("validate", [py, "-m", "tasks.validate"]),
            ]
            for step, cmd in steps:
                rows.append({"run": i, "step": step, **timed(cmd, work)})

    print(f"{'run':>3}  {'step':<48} {'wall s':>7} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['run']:>3}  {r['step']:<48} {r['wall_s']:>7} {r['peak_rss_mib']:>13}")
    write_result("data_stages", {"machine": host, "rows": rows})


if __name__ == "__main__":
    main()
