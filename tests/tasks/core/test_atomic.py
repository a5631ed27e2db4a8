"""Write-then-rename: outputs that change together or not at all, and no temporary file outliving its writer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core.atomic import discard, remove_stale_temporaries, together, write_text


def test_together_replaces_every_output_or_none(tmp_path: Path) -> None:
    report, metrics, stale = tmp_path / "report.md", tmp_path / "sub/metrics.json", tmp_path / "old.png"
    for path in (report, metrics, stale):
        write_text(path, "previous")
    with pytest.raises(RuntimeError), together():
        write_text(report, "new")
        discard(stale)
        assert report.read_text() == "previous", "nothing is renamed before the block succeeds"
        raise RuntimeError("the metrics could not be computed")
    assert [p.read_text() for p in (report, metrics, stale)] == ["previous"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.png", "report.md", "sub"], "no temporary file left"
    with together():
        write_text(report, "new")
        write_text(metrics, "new")
        discard(stale)
    assert report.read_text() == metrics.read_text() == "new" and not stale.exists()


def test_a_dead_writers_temporary_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    dest = tmp_path / "archive.tar.gz"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".archive.tar.gz.{dead.stdout.strip()}.abc123.tmp.tar.gz"
    orphan.write_bytes(b"half")
    alive = tmp_path / f".archive.tar.gz.{os.getppid()}.def456.tmp.tar.gz"  # a writer still running
    alive.write_bytes(b"busy")
    other = tmp_path / ".other.tar.gz.1.x.tmp.tar.gz"
    other.write_bytes(b"not ours")
    assert remove_stale_temporaries(dest) == [orphan]
    write_text(dest, "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dest.name, alive.name, other.name])
