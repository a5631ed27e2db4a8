"""Stage preprocess: stratified subsets and splits, facts, atomic outputs, and the real archive."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.core.params import DataParams
from tasks.data.archive import read_archive
from tasks.data.splits import array_digest, facts, load_split, make_splits, stratified_sample, write_splits
from tests.conftest import TEST_DATA


def params(**kw: object) -> DataParams:
    """The shared test data params with ``kw`` changed, validated again."""
    return DataParams(**(TEST_DATA.model_dump() | kw))


def test_stratified_sample_keeps_class_shares() -> None:
    labels = np.repeat(np.arange(10), [100, 100, 100, 100, 100, 50, 50, 50, 50, 50])
    idx = stratified_sample(labels, 150, np.random.default_rng(0))
    assert len(idx) == 150 and len(set(idx.tolist())) == 150
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.tolist() == [20] * 5 + [10] * 5


def test_splits_are_disjoint_stratified_and_seeded(fixture_archive: tuple[Path, str]) -> None:
    data = read_archive(fixture_archive[0])
    a = make_splits(data, params())
    b = make_splits(data, params())
    c = make_splits(data, params(seed=7))
    assert [len(a[s].y) for s in ("train", "val", "test")] == [270, 30, 100]
    assert np.bincount(a["val"].y).tolist() == [3] * 10
    assert np.array_equal(a["val"].x, b["val"].x), "same seed, same split"
    assert not np.array_equal(a["val"].x, c["val"].x), "another seed, another split"
    train_rows = {r.tobytes() for r in a["train"].x}
    assert not any(r.tobytes() in train_rows for r in a["val"].x)


def test_limits_take_stratified_subsets(fixture_archive: tuple[Path, str]) -> None:
    splits = make_splits(read_archive(fixture_archive[0]), params(limit_train=100, limit_test=50))
    assert [len(splits[s].y) for s in ("train", "val", "test")] == [90, 10, 50]
    assert np.bincount(splits["test"].y).tolist() == [5] * 10


def test_outputs_and_facts(fixture_archive: tuple[Path, str], tmp_path: Path) -> None:
    data = read_archive(fixture_archive[0])
    splits = make_splits(data, params())
    write_splits(splits, facts(splits, data, params()), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["facts.json", "test.npz", "train.npz", "val.npz"]
    info = json.loads((tmp_path / "facts.json").read_text())
    assert info["sizes"] == {"train": 270, "val": 30, "test": 100}
    assert info["class_counts"]["val"] == [3] * 10
    back = load_split("train", tmp_path)
    assert back.x.dtype == np.uint8 and back.x.shape == (270, 32, 32, 3)
    assert info["sha256"]["train"]["x"] == array_digest(back.x)
    mean = splits["train"].x.reshape(-1, 3).mean(axis=0)
    assert info["train_channel_mean"] == pytest.approx(mean.tolist(), abs=1e-3)


@pytest.mark.real_data
def test_real_archive_preprocess(real_archive: Path, tmp_path: Path) -> None:
    """The whole real data set: exact sizes, balanced classes, the published channel statistics."""
    data = read_archive(real_archive)
    splits = make_splits(data, params())
    info = facts(splits, data, params())
    assert info["sizes"] == {"train": 45000, "val": 5000, "test": 10000}
    assert info["class_counts"]["val"] == [500] * 10 and info["class_counts"]["test"] == [1000] * 10
    assert info["train_channel_mean"] == pytest.approx([125.3, 123.0, 113.9], abs=0.5)
    assert info["train_channel_std"] == pytest.approx([63.0, 62.1, 66.7], abs=0.5)
    # Peak memory is measured per process by bench/bench_data_stages.py, not asserted here.
