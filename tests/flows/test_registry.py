"""The model registry read and written through GTO's command line, in a git repository made here."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

from flows import registry, summary
from tests.conftest import run

GIT_ID = ["-c", "user.email=t@example.invalid", "-c", "user.name=t"]


def commit_metrics(repo: Path, accuracy: float, message: str) -> str:
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/evaluate.json").write_text(json.dumps({"alexnet": {"test_accuracy": accuracy}}))
    run(["git", "add", "metrics"], cwd=repo)
    run(["git", *GIT_ID, "commit", "-qm", message], cwd=repo)
    return run(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip()


def test_versions_stages_and_standings_against_prod(tmp_path: Path) -> None:
    run(["git", "init", "-q", "-b", "main", str(tmp_path)], cwd=tmp_path)
    first = commit_metrics(tmp_path, 0.80, "first")
    run(["gto", "register", "alexnet", first, "--version", "v0.1.0"], cwd=tmp_path)
    run(["gto", "assign", "alexnet", "--version", "v0.1.0", "--stage", "prod"], cwd=tmp_path)
    second = commit_metrics(tmp_path, 0.85, "better")

    entries = registry.entries(tmp_path)
    assert entries["alexnet"].latest == "v0.1.0" and entries["alexnet"].stages == {"prod": "v0.1.0"}
    assert registry.versions_at(tmp_path, first, entries) == {"alexnet": "v0.1.0 (prod)"}
    assert registry.versions_at(tmp_path, second, entries) == {}
    ours = (tmp_path / "metrics/evaluate.json").read_text()
    alexnet, vgg16 = registry.standings(tmp_path, ours, ("alexnet", "vgg16"), entries)
    assert (alexnet.prod_version, alexnet.prod_accuracy, alexnet.accuracy) == ("v0.1.0", 0.80, 0.85)
    assert alexnet.beats_prod and vgg16.prod_version is None and not vgg16.beats_prod

    # What the pipeline flow's summary says of them, for the commit prod points at.
    md = summary.pipeline_summary(tmp_path, [], "", standings=[alexnet, vgg16], registered={"alexnet": "v0.1.0 (prod)"})
    assert "| alexnet | v0.1.0 | 80.00 % | - | 85.00 % | **yes** | v0.1.0 (prod) |" in md, md
    assert "| vgg16 | none assigned | - | - | - | no | not registered |" in md, md
    broken = summary.pipeline_summary(tmp_path, [], "", registry_problem="gto show --json failed in /x: boom")
    assert "_The registry could not be read: gto show --json failed in /x: boom_" in broken, broken


def test_the_seed_spread_comes_from_experiments_that_differ_only_in_the_models_seed() -> None:
    params = {"data.limit_train": 500, "train.checkpoint_dir": "checkpoints", "alexnet.seed": 42, "alexnet.epochs": 3}
    params |= {"vgg16.seed": 42}

    def experiment(accuracy: float, **changes: object) -> dict:
        return {"params": params | changes, "evaluate": {"alexnet": {"test_accuracy": accuracy}}}

    experiments = {
        "seeds-s1": experiment(0.50, **{"alexnet.seed": 1}),
        "seeds-s2": experiment(0.54, **{"alexnet.seed": 2}),
        "seeds-s3": experiment(0.52, **{"alexnet.seed": 3, "vgg16.seed": 7}),  # VGG16's params train no AlexNet
        "longer": experiment(0.70, **{"alexnet.epochs": 9}),  # another recipe: not a seed of prod's
        "smaller": experiment(0.30, **{"data.limit_train": 100}),
        "unevaluated": {"params": params, "evaluate": {}},
    }
    sd, n = registry.seed_spread(experiments, params, "alexnet")
    assert n == 3 and sd == pytest.approx(statistics.stdev([0.50, 0.54, 0.52]))
    assert registry.seed_spread({"one": experiment(0.5)}, params, "alexnet") is None
    assert registry.seed_spread(experiments, params, "vgg16") is None  # no VGG16 accuracy measured


def test_prods_seed_spread_is_read_from_the_experiments_dvc_recorded_on_its_commit(tmp_path: Path) -> None:
    """Experiments saved with ``dvc exp save`` (as a sweep's would be, without training) on the commit prod
    tags -- or, for a version that is itself an experiment (a nightly run's), on the commit it ran on."""
    run(["git", "init", "-q", "-b", "main", str(tmp_path)], cwd=tmp_path)
    run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path)
    (tmp_path / "dvc.yaml").write_text("metrics:\n  - metrics/evaluate.json\n")
    (tmp_path / "params.yaml").write_text("alexnet:\n  seed: 42\n  epochs: 3\n")
    run(["git", "add", "-A"], cwd=tmp_path)
    first = commit_metrics(tmp_path, 0.80, "prod's run")

    def save(name: str, seed: int, accuracy: float, epochs: int = 3) -> None:
        (tmp_path / "params.yaml").write_text(f"alexnet:\n  seed: {seed}\n  epochs: {epochs}\n")
        (tmp_path / "metrics/evaluate.json").write_text(json.dumps({"alexnet": {"test_accuracy": accuracy}}))
        run([sys.executable, "-m", "dvc", "exp", "save", "-q", "-n", name], cwd=tmp_path)

    save("seeds-s1", 1, 0.82)
    save("seeds-s2", 2, 0.78)
    save("longer", 42, 0.95, epochs=9)
    run(["gto", "register", "alexnet", first, "--version", "v0.1.0"], cwd=tmp_path)
    run(["gto", "assign", "alexnet", "--version", "v0.1.0", "--stage", "prod"], cwd=tmp_path)
    ours = json.dumps({"alexnet": {"test_accuracy": 0.81}})
    [alexnet] = registry.standings(tmp_path, ours, ("alexnet",))
    sd, n = alexnet.spread
    assert n == 2 and sd == pytest.approx(statistics.stdev([0.82, 0.78]))
    assert alexnet.beats_prod and alexnet.within_spread  # 0.81 against 0.80, sd 0.028

    refs = run(["git", "for-each-ref", "refs/exps", "--format=%(objectname) %(refname)"], cwd=tmp_path).stdout
    [seed_one] = [line.split()[0] for line in refs.splitlines() if line.endswith("/seeds-s1")]
    run(["gto", "register", "alexnet", seed_one, "--version", "v0.2.0"], cwd=tmp_path)
    run(["gto", "assign", "alexnet", "--version", "v0.2.0", "--stage", "prod"], cwd=tmp_path)
    [alexnet] = registry.standings(tmp_path, ours, ("alexnet",))  # seed 1's params: its siblings by seed
    assert alexnet.prod_version == "v0.2.0" and alexnet.prod_accuracy == 0.82
    sd, n = alexnet.spread
    assert n == 2 and sd == pytest.approx(statistics.stdev([0.82, 0.78]))
