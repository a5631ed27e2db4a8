"""The stage runner: failures of the environment or of an input file are one ``error:`` line with exit 2
(final) or 75 (a full disk: try again); a bug keeps its traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, subprocess_env

RUN = "import sys; sys.path.insert(0, {repo!r}); from tasks.core.cli import run_stage\n{body}\nrun_stage(main)"


def run_main(body: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = RUN.format(repo=str(REPO), body=body)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=subprocess_env(), capture_output=True, text=True)


def test_a_full_disk_is_one_line(tmp_path: Path) -> None:
    """/dev/full: the kernel's own "No space left on device" for every write."""
    done = run_main("def main():\n    with open('/dev/full', 'wb') as fh:\n        fh.write(b'x' * 65536)", tmp_path)
    assert done.returncode == 75 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "error: disk full: [Errno 28] No space left on device"


def test_permission_denied_on_an_output_is_one_line(tmp_path: Path) -> None:
    """sysfs refuses new files to every user, root included (chmod would not stop root)."""
    body = "from tasks.core.atomic import write_text\ndef main():\n    write_text('/sys/fs/report.md', 'x')"
    done = run_main(body, tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "error: permission denied, writing /sys/fs/report.md: [Errno 13] Permission denied"


def test_a_bug_keeps_its_traceback(tmp_path: Path) -> None:
    for body in ("def main():\n    1 / 0", "def main():\n    open('missing.txt')", "def main():\n    {}['key']"):
        done = run_main(body, tmp_path)
        assert done.returncode == 1 and "Traceback" in done.stderr and "error:" not in done.stderr, body


def test_a_damaged_input_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "split.npz").write_bytes(b"PK\x03\x04 cut short")
    body = "from tasks.data.splits import load_split\ndef main():\n    load_split('split', '.')"
    done = run_main(body, tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(
        "error: damaged or not the right kind of file, reading split.npz (the prepared split split): BadZipFile"
    )
