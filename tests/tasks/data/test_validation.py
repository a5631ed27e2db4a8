"""Stage validate: each expectation fails when -- and only when -- the arrays are broken its way."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tasks.core.params import ValidateParams, load
from tasks.data.archive import read_archive
from tasks.data.splits import Split, facts, load_split, make_splits, write_splits
from tasks.data.summaries import channels_frame
from tasks.data.validation import build_checks, failure_message, render_html, run_checks, validate
from tests.conftest import REPO, TEST_DATA

DATA = TEST_DATA
VALIDATE = load(ValidateParams, REPO / "params.yaml")


@pytest.fixture(scope="module")
def prepared(fixture_archive: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("prepared")
    data = read_archive(fixture_archive[0])
    splits = make_splits(data, DATA)
    write_splits(splits, facts(splits, data, DATA), folder)
    return folder


def broken(prepared: Path, tmp_path: Path, split: str, change: Callable[[Split], Split]) -> Path:
    """A copy of the prepared folder with one split rewritten by ``change``."""
    folder = tmp_path / "prepared"
    folder.mkdir()
    for f in prepared.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    s = change(load_split(split, folder))
    np.savez(folder / f"{split}.npz", x=s.x, y=s.y)
    return folder


def test_sound_arrays_pass(prepared: Path) -> None:
    report = validate(prepared, DATA, VALIDATE)
    assert report["success"] is True and report["failed"] == []
    names = {e["name"] for e in report["expectations"]}
    assert {
        "image_shape",
        "dtype",
        "pixel_min",
        "pixel_max",
        "finite",
        "labels_in_range",
        "all_classes_present",
        "class_balance",
        "split_sizes",
        "no_test_leakage",
        "constant_images",
    } <= names
    assert report["skipped"], "the channel statistics check is skipped on a subset and says so"


def _with(x: np.ndarray | None = None, y: np.ndarray | None = None) -> Callable[[Split], Split]:
    return lambda s: Split(s.x if x is None else x, s.y if y is None else y)


def _shape(s: Split) -> Split:
    return Split(np.ascontiguousarray(s.x[..., :1]), s.y)


def _as_float(s: Split) -> Split:
    return Split(s.x.astype(np.float32), s.y)


def _negative_pixel(s: Split) -> Split:
    x = s.x.astype(np.int16)
    x[4, 0, 0, 0] = -3
    return Split(x, s.y)


def _bright_pixel(s: Split) -> Split:
    x = s.x.astype(np.int16)
    x[4, 0, 0, 0] = 300
    return Split(x, s.y)


def _nan(s: Split) -> Split:
    x = s.x.astype(np.float32)
    x[2, 5, 5, 1] = np.nan
    x[3, 1, 1, 1] = np.inf
    return Split(x, s.y)


def _label_ten(s: Split) -> Split:
    y = s.y.copy()
    y[0] = 10
    return Split(s.x, y)


def _drop_class(s: Split) -> Split:
    y = s.y.copy()
    y[y == 9] = 8
    return Split(s.x, y)


def _unbalance(s: Split) -> Split:
    y = s.y.copy()
    y[np.flatnonzero(y == 0)[:10]] = 1
    return Split(s.x, y)


def _constant(s: Split) -> Split:
    x = s.x.copy()
    x[:6] = 128
    return Split(x, s.y)


@pytest.mark.parametrize(
    ("split", "change", "expected"),
    [
        ("test", _shape, {"image_shape"}),
        ("train", _as_float, {"dtype"}),
        # A uint8 array cannot hold a pixel outside 0..255 or a NaN, so these come with a dtype failure.
        ("train", _negative_pixel, {"dtype", "pixel_min"}),
        ("val", _bright_pixel, {"dtype", "pixel_max"}),
        ("train", _nan, {"dtype", "finite"}),
        ("train", _label_ten, {"labels_in_range"}),
        ("train", _unbalance, {"class_balance"}),
        ("train", _constant, {"constant_images"}),
    ],
)
def test_each_expectation_catches_its_breakage(
    prepared: Path, tmp_path: Path, split: str, change: Callable[[Split], Split], expected: set[str]
) -> None:
    report = validate(broken(prepared, tmp_path, split, change), DATA, VALIDATE)
    assert report["success"] is False
    assert set(report["failed"]) == expected


def test_missing_class(prepared: Path, tmp_path: Path) -> None:
    # A lenient balance tolerance isolates the presence check from the balance check.
    lenient = VALIDATE.model_copy(update={"class_balance_tolerance": 1.0})
    report = validate(broken(prepared, tmp_path, "val", _drop_class), DATA, lenient)
    assert report["failed"] == ["all_classes_present"]
    entry = next(e for e in report["expectations"] if e["name"] == "all_classes_present")
    assert entry["examples"] == ["val, class 9"]


def test_split_sizes_follow_params(prepared: Path) -> None:
    report = validate(prepared, DATA.model_copy(update={"val_fraction": 0.2}), VALIDATE)
    assert report["failed"] == ["split_sizes"]


def test_leakage_names_the_leaked_test_image(prepared: Path, tmp_path: Path) -> None:
    train = load_split("train", prepared)

    def leak(s: Split) -> Split:
        x = s.x.copy()
        x[7] = train.x[0]
        return Split(x, s.y)

    report = validate(broken(prepared, tmp_path, "test", leak), DATA, VALIDATE)
    assert report["failed"] == ["no_test_leakage"]
    entry = next(e for e in report["expectations"] if e["name"] == "no_test_leakage")
    assert entry["observed_value"] == 1 and entry["examples"] == ["test[7]"]


def test_channel_statistics_against_known_figures() -> None:
    # Half the pixels at mean - std, half at mean + std: exactly the published mean and std.
    sign = np.where(np.arange(200 * 32 * 32) % 2, 1.0, -1.0).reshape(200, 32, 32, 1)
    like_cifar = np.array(VALIDATE.channel_mean) + sign * np.array(VALIDATE.channel_std)
    checks = [c for c in build_checks(DATA, VALIDATE, full=True) if c.table == "channels"]
    assert {c.name for c in checks} == {"channel_mean", "channel_std"}
    ok = run_checks(checks, {"channels": channels_frame(like_cifar.round().astype(np.uint8), VALIDATE)})
    assert ok.success, ok.entries
    dark = run_checks(checks, {"channels": channels_frame((like_cifar * 0.8).astype(np.uint8), VALIDATE)})
    assert set(dark.failed) == {"channel_mean", "channel_std"}


def test_html_report_is_self_contained_and_names_failures(prepared: Path, tmp_path: Path) -> None:
    report = validate(broken(prepared, tmp_path, "train", _constant), DATA, VALIDATE)
    page = render_html(report)
    assert "FAILED: constant_images" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    message = failure_message(report)
    assert "constant_images" in message and "train[0]" in message


def test_html_report_escapes_what_the_checks_report() -> None:
    """Error text and examples come from the data and from Great Expectations: shown as text, never markup."""
    evil = "<script>alert('x')</script>"
    report = {
        "success": False,
        "failed": ["dtype"],
        "sizes": {"train": 9, "val": 1, "test": 10},
        "expectations": [
            {"name": "dtype", "table": "images", "description": "arrays are uint8", "success": False, "error": evil},
            {"name": "pixel_min", "table": "images", "description": "0..255", "success": True, "examples": [evil]},
        ],
        "skipped": [{"name": "channel_mean/channel_std", "reason": evil}],
        "great_expectations_version": "1.0",
    }
    page = render_html(report)
    assert "<script" not in page
    assert "error: &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "examples: [&#34;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&#34;]" in page
    assert "<li>channel_mean/channel_std: &lt;script&gt;" in page
    assert "FAILED: dtype" in page and "train: 9, val: 1, test: 10" in page


def test_stage_exits_nonzero_and_writes_reports(prepared: Path, tmp_path: Path) -> None:
    """The entry point as DVC runs it: reports written, each failure named, exit 2, no traceback."""
    import subprocess

    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text((REPO / "params.yaml").read_text())
    target = work / "data" / "prepared"
    target.parent.mkdir()
    broken(prepared, tmp_path, "train", _label_ten).rename(target)
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.validate"],
        cwd=work,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "GX_ANALYTICS_ENABLED": "false"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "labels_in_range" in proc.stderr and "Traceback" not in proc.stderr
    report = json.loads((work / "reports/validation.json").read_text())
    assert report["success"] is False and report["failed"] == ["labels_in_range"]
    assert (work / "reports/validation.html").is_file()
    headline = json.loads((work / "metrics/validation.json").read_text())
    assert headline == {
        "success": False,
        "failed": 1,
        "expectations": len(report["expectations"]),
        "sizes": report["sizes"],
    }


@pytest.mark.real_data
def test_real_archive_passes_validation(real_archive: Path, tmp_path: Path) -> None:
    data = read_archive(real_archive)
    splits = make_splits(data, DATA)
    write_splits(splits, facts(splits, data, DATA), tmp_path)
    del data, splits
    report = validate(tmp_path, DATA, VALIDATE)
    assert report["success"] is True, failure_message(report)
    names = {e["name"] for e in report["expectations"]}
    assert {"channel_mean", "channel_std", "no_test_leakage"} <= names
    assert report["sizes"] == {"train": 45000, "val": 5000, "test": 10000}
