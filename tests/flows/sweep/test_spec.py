"""Sweep files, their expansion into experiments, the comparison table and the workspace plumbing,
without Prefect (the flows themselves run in test_sweep.py)."""

from __future__ import annotations

import re

import csv
import io
import statistics
from pathlib import Path

import pytest
import yaml

from flows.sweep import spec as sweep_spec
from flows.sweep import table as sweep_table
from flows import workspace
from flows.stages import shared_stages
from flows.sweep.spec import SweepError
from flows.sweep.table import DONE, DONE_EARLIER, FAILED, Outcome
from flows.workspace import WorkspaceError, default_remote
from tests.conftest import REPO, dvc, run


def parse(text: str, **kwargs):
    return sweep_spec.parse(yaml.safe_load(text), REPO, "test.yaml", **kwargs)


def test_grid_times_seeds_names_and_overrides_in_order() -> None:
    sweep = parse("""
name: lr
configs: [configs/quick-cpu.yaml]
params: {data: {limit_train: 1000}, alexnet.epochs: 2}
grid:
  alexnet.learning_rate: [0.05, 0.2]
  alexnet.batch_size: [64, 128]
seeds: 2
seed_params: [alexnet.seed]
compare: [alexnet]
""")
    exps = sweep.experiments()
    assert [e.name for e in exps][:3] == [
        "lr-learning_rate-0.05_batch_size-64-s1",
        "lr-learning_rate-0.05_batch_size-64-s2",
        "lr-learning_rate-0.05_batch_size-128-s1",
    ]
    assert len(exps) == 8 and sweep.compare == ["alexnet"]
    first = exps[0]
    # configs, then params, then the point, then the seed: one -S per param, with the last value given
    assert first.overrides[0] == "alexnet.variant=seed"  # from configs/quick-cpu.yaml
    assert len({o.split("=")[0] for o in first.overrides}) == len(first.overrides)
    for flag in (
        "alexnet.epochs=2",
        "alexnet.learning_rate=0.05",
        "alexnet.batch_size=64",
        "alexnet.seed=1",
        "data.limit_train=1000",
    ):
        assert flag in first.overrides
    assert "alexnet.learning_rate=0.2" not in first.overrides  # the quick-cpu value, overridden by the point
    assert first.params["alexnet.learning_rate"] == 0.05 and first.own == {
        "alexnet.learning_rate": 0.05,
        "alexnet.batch_size": 64,
        "alexnet.seed": 1,
    }


def test_points_list_default_seed_params_extra_overrides_and_no_seeds() -> None:
    sweep = parse(
        """
name: variants
points:
  - {name: student, params: {alexnet: {variant: seed}}}
  - {params: {alexnet.variant: paper, alexnet.dropout: null}}
""",
        extra_overrides=["data.url=/data/cifar.tar.gz", "params.yaml:data.limit_test=50"],
    )
    exps = sweep.experiments()
    assert [e.name for e in exps] == ["variants-student", "variants-variant-paper_dropout-null"]
    assert exps[0].seed is None and "alexnet.seed" not in exps[0].params
    assert exps[0].overrides == ["data.url=/data/cifar.tar.gz", "data.limit_test=50", "alexnet.variant=seed"]
    assert "alexnet.dropout=null" in exps[1].overrides
    with_seeds = parse("name: s\nseeds: [7]\n").experiments()
    assert [e.name for e in with_seeds] == ["s-base-s7"]
    assert with_seeds[0].overrides == ["alexnet.seed=7", "vgg16.seed=7"]  # DEFAULT_SEED_PARAMS


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\ngrid: {alexnet.width: 0.5}\n", "non-empty list"),
        ("name: x\nseeds: 0\n", "at least 1"),
        ("name: x\nseeds: [1, 1]\n", "repeat"),
        ("name: x\nsurprise: 1\n", "surprise: not a key of a sweep file"),
        ("name: x\ngird: {alexnet.width: [1]}\n", "gird: not a key of a sweep file (did you mean 'grid'?)"),
        ("name: x\nparams: {alexnet: 3}\n", "section name"),
        ("name: x\nconfigs: [configs/none.yaml]\n", "cannot read"),
        ("name: x\npoints:\n  - {name: a}\n  - {name: a}\n", "share the name"),
        ("name: x\npoints:\n  - {nme: a}\n", "points.0.nme: not a key of a point (did you mean 'name'?)"),
    ],
)
def test_malformed_sweeps_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(SweepError, match=re.escape(message)):
        parse(text).experiments()


def test_names_are_valid_git_refs() -> None:
    assert sweep_spec.slug("lr 1e-4/a..b:c") == "lr-1e-4-a.b-c"
    assert sweep_spec.slug(".hidden.lock") == "hidden"


def test_shipped_sweeps_expand() -> None:
    variants = sweep_spec.load("sweeps/alexnet-variants.yaml", REPO).experiments()
    assert [e.name for e in variants] == [f"alexnet-variants-{p}-s{s}" for p in ("student", "paper") for s in (1, 2, 3)]
    assert {e.params["alexnet.variant"] for e in variants} == {"seed", "paper"}
    lr = sweep_spec.load("sweeps/learning-rate.yaml", REPO).experiments()
    assert sorted({e.params["alexnet.learning_rate"] for e in lr}) == [0.05, 0.2, 0.8] and len(lr) == 6
    for e in variants + lr:  # the quick setting: a subset and few epochs
        assert e.params["data.limit_train"] == 10000 and e.params["alexnet.epochs"] == 4
        assert e.params["vgg16.weights"] == "none"


def show_json(values: dict[str, tuple[float, float]], baseline: str = "b" * 40) -> list[dict]:
    """``dvc exp show --json`` shaped output with one experiment per entry of ``values``."""

    def data(variant: str, seed: int, acc: float, loss: float) -> dict:
        return {
            "params": {"params.yaml": {"data": {"alexnet": {"variant": variant, "seed": seed}}}},
            "metrics": {
                "metrics/evaluate.json": {
                    "data": {
                        "alexnet": {"test_accuracy": acc, "test_loss": loss, "train_seconds": 2.0},
                        "vgg16": {"test_accuracy": 0.5, "test_loss": 1.0, "train_seconds": 9.0},
                    }
                }
            },
        }

    exps = []
    for name, (acc, loss) in values.items():
        variant, seed = name.split("-")[1], int(name.rsplit("s", 1)[1])
        exps.append({"name": name, "revs": [{"rev": name * 2, "name": name, "data": data(variant, seed, acc, loss)}]})
    return [{"rev": "workspace", "data": {}}, {"rev": baseline, "name": "main", "data": {}, "experiments": exps}]


def test_table_rows_groups_and_files() -> None:
    sweep = parse("""
name: t
grid: {alexnet.variant: [seed, paper]}
seeds: [1, 2, 3]
seed_params: [alexnet.seed]
compare: [alexnet]
""")
    exps = sweep.experiments()
    values = {
        "t-variant-seed-s1": (0.5, 1.5),
        "t-variant-seed-s2": (0.6, 1.2),
        "t-variant-seed-s3": (0.7, 1.0),
        "t-variant-paper-s1": (0.4, 2.0),
    }
    recorded = sweep_table.experiments_from_show(show_json(values), "b" * 40)
    assert set(recorded) == set(values) and recorded["t-variant-seed-s2"]["params"]["alexnet.seed"] == 2
    outcomes = {e.name: Outcome(DONE, wall_seconds=10.0) for e in exps if e.name in values}
    outcomes["t-variant-seed-s3"] = Outcome(DONE_EARLIER)
    outcomes["t-variant-paper-s2"] = Outcome(FAILED, "error: boom | pipe")
    outcomes["t-variant-paper-s3"] = Outcome(FAILED, "error: boom")
    table = sweep_table.build(sweep, outcomes, recorded)
    assert table.keys == ["alexnet.variant", "alexnet.seed"]
    assert table.columns == ["alexnet.test_accuracy", "alexnet.test_loss", "alexnet.train_seconds"]
    seed_group, paper_group = table.groups
    assert (seed_group["n"], seed_group["n_done"], paper_group["n_done"]) == (3, 3, 1)
    assert seed_group["alexnet.test_accuracy_mean"] == pytest.approx(statistics.mean([0.5, 0.6, 0.7]))
    assert seed_group["alexnet.test_accuracy_std"] == pytest.approx(statistics.stdev([0.5, 0.6, 0.7]))
    assert seed_group["alexnet.test_loss_std"] == pytest.approx(statistics.stdev([1.5, 1.2, 1.0]))
    assert paper_group["alexnet.test_accuracy_mean"] == 0.4 and paper_group["alexnet.test_accuracy_std"] is None
    assert seed_group["wall_seconds_mean"] == 10.0  # the experiment that finished before has no wall time here

    md = sweep_table.markdown(sweep, table, baseline="b" * 40)
    assert "| variant-seed | seed | 3/3 | 60.00 % | 10.00 % |" in md
    assert "| t-variant-paper-s2 | failed | paper | 2 | - | - | - | - |" in md
    assert "error: boom \\| pipe" in md  # a pipe in a message does not break the table
    rows = list(csv.DictReader(io.StringIO(sweep_table.to_csv(table.rows))))
    assert rows[0]["alexnet.test_accuracy"] == "0.5" and rows[4]["status"] == FAILED
    grouped = list(csv.DictReader(io.StringIO(sweep_table.to_csv(table.groups))))
    assert float(grouped[0]["alexnet.test_accuracy_mean"]) == pytest.approx(0.6)
    assert grouped[1]["alexnet.test_accuracy_std"] == ""


def test_a_param_a_point_leaves_unset_shows_the_baseline_value() -> None:
    sweep = parse("""
name: mixed
points:
  - {name: lr06, params: {alexnet.learning_rate: 0.06}}
  - {name: paper, params: {alexnet.variant: paper}}
""")
    baseline = {"alexnet.learning_rate": 0.02, "alexnet.variant": "seed"}
    table = sweep_table.build(sweep, {}, {}, baseline)
    assert table.keys == ["alexnet.learning_rate", "alexnet.variant"]
    ran = [(0.06, "seed"), (0.02, "paper")]
    assert [(r["alexnet.learning_rate"], r["alexnet.variant"]) for r in table.rows] == ran
    assert [(g["alexnet.learning_rate"], g["alexnet.variant"]) for g in table.groups] == ran
    unknown = sweep_table.build(sweep, {}, {})  # without the baseline's params: a dash, as before
    assert [r["alexnet.variant"] for r in unknown.rows] == [None, "paper"]


def test_recorded_params_must_match_the_sweep() -> None:
    exp = parse("name: m\ngrid: {alexnet.learning_rate: [0.0001]}\n").experiments()[0]
    assert sweep_table.mismatched_params(exp, {"alexnet.learning_rate": 1e-4}) == []
    assert sweep_table.mismatched_params(exp, {"alexnet.learning_rate": 0.001}) == [
        "alexnet.learning_rate=0.0001 (the experiment has 0.001)"
    ]


def test_shared_stages_are_those_no_experiment_changes(dvc_repo: Path) -> None:
    assert shared_stages(dvc_repo, ["alexnet.seed", "alexnet.variant"]) == [
        "download",
        "preprocess",
        "validate",
        "train_vgg16",
    ]
    assert shared_stages(dvc_repo, ["data.limit_train"]) == ["download"]
    assert shared_stages(dvc_repo, ["evaluate.batch_size"], ["evaluate"]) == [
        "download",
        "preprocess",
        "validate",
        "train_alexnet",
        "train_vgg16",
    ]
    assert shared_stages(dvc_repo, ["params.yaml:train.require_gpu"], ["validate"]) == [
        "download",
        "preprocess",
        "validate",
    ]


def test_workspace_is_a_clone_at_the_baseline_that_is_reset_when_reused(dvc_repo: Path, tmp_path: Path) -> None:
    rev = run(["git", "rev-parse", "HEAD"], cwd=dvc_repo).stdout.strip()
    ws = tmp_path / "ws" / "one"
    assert (
        workspace.prepare(
            ws, str(dvc_repo), rev, cache_dir=str(dvc_repo / ".dvc/cache"), dvc_remote=str(tmp_path / "remote")
        )
        == "cloned"
    )
    assert run(["git", "rev-parse", "HEAD"], cwd=ws).stdout.strip() == rev
    config = dvc("config", "--list", "--local", cwd=ws).stdout
    assert f"cache.dir={dvc_repo / '.dvc/cache'}" in config and "core.remote=sweep" in config
    (ws / "params.yaml").write_text("changed: true\n")  # what a failed `dvc exp run -S` leaves behind
    (ws / "checkpoints/alexnet").mkdir(parents=True)  # a retried training resumes from it
    (ws / "checkpoints/alexnet/state.json").write_text("{}")
    assert workspace.prepare(ws, str(dvc_repo), rev, cache_dir=None, dvc_remote=None) == "reused"
    assert (ws / "params.yaml").read_text() == (dvc_repo / "params.yaml").read_text()
    assert (ws / "checkpoints/alexnet/state.json").is_file()
    assert "cache.dir" not in dvc("config", "--list", "--local", cwd=ws).stdout

    (dvc_repo / "new.txt").write_text("n")
    run(["git", "add", "new.txt"], cwd=dvc_repo)
    run(["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "new"], cwd=dvc_repo)
    newer = run(["git", "rev-parse", "HEAD"], cwd=dvc_repo).stdout.strip()
    assert workspace.prepare(ws, str(dvc_repo), newer, cache_dir=None, dvc_remote=None) == "reused"
    assert run(["git", "rev-parse", "HEAD"], cwd=ws).stdout.strip() == newer  # fetched
    with pytest.raises(WorkspaceError, match="is not in"):
        workspace.prepare(tmp_path / "ws" / "two", str(dvc_repo), "0" * 40, cache_dir=None, dvc_remote=None)


def test_default_remote_is_found_and_told_apart_from_a_committed_one(dvc_repo: Path, tmp_path: Path) -> None:
    assert default_remote(dvc_repo) == (None, False)
    dvc("remote", "add", "--local", "-d", "mine", "../remote", cwd=dvc_repo)
    assert default_remote(dvc_repo) == (str((dvc_repo.parent / "remote").resolve()), False)
    dvc("remote", "remove", "--local", "mine", cwd=dvc_repo)
    dvc("remote", "add", "-d", "team", str(tmp_path / "team"), cwd=dvc_repo)
    assert default_remote(dvc_repo) == (str(tmp_path / "team"), True)
