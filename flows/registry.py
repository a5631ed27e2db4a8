"""The model registry as the nightly reads and writes it: GTO's git tags on the models of dvc.yaml's
``artifacts:`` (``alexnet@v1.2.0`` a version, ``alexnet#prod#3`` a stage), through GTO's command line.

A registered version is a commit; its test accuracy is that commit's ``metrics/evaluate.json``, and its
seed spread the sample standard deviation of test accuracy over the DVC experiments on that commit that
differ from it only in the model's seed (what a sweep with ``seeds:`` leaves there). The nightly compares
its run with each model's ``prod`` version and, when asked, registers a run that beats it and assigns it
``staging``; ``prod`` is a person's ``gto assign``. No Prefect here.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.stages import StageFailure, child_env, dvc_out
from flows.summary import test_accuracies
from flows.sweep.table import experiments_from_show, flat
from flows.workspace import WorkspaceError, git, params_at, read_at
from tasks.core.paths import EVALUATE_METRICS

#: The stage a person gives the version in use, and the one the nightly may give a run that beats it.
PROD, STAGING = "prod", "staging"


class RegistryError(RuntimeError):
    """A GTO command failed; the message carries GTO's own words."""


@dataclass(frozen=True)
class Entry:
    """One model in the registry: its latest version and the version each stage points at."""

    name: str
    latest: str | None
    stages: dict[str, str]


@dataclass(frozen=True)
class Standing:
    """This run's test accuracy against the ``prod`` version's, for one model."""

    model: str
    accuracy: float | None
    prod_version: str | None
    prod_accuracy: float | None
    #: prod's seed spread: (sample standard deviation of test accuracy, number of seeds), where measured
    spread: tuple[float, int] | None = None

    @property
    def beats_prod(self) -> bool:
        """Better than prod on test accuracy; with no prod version yet, any evaluated run is."""
        if self.accuracy is None:
            return False
        return self.prod_accuracy is None or self.accuracy > self.prod_accuracy

    @property
    def within_spread(self) -> bool:
        """Better than prod by less than prod's seed standard deviation: another seed could undo it."""
        ahead = self.beats_prod and self.prod_accuracy is not None and self.accuracy is not None
        return bool(ahead and self.spread and self.accuracy - self.prod_accuracy < self.spread[0])


def gto(args: list[str], repo: Path) -> str:
    """``gto <args>`` in ``repo`` (the ``gto`` beside this interpreter: :func:`child_env`);
    :class:`RegistryError` with its message when it fails."""
    proc = subprocess.run(["gto", *args], cwd=repo, env=child_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise RegistryError(f"gto {' '.join(args)} failed in {repo}: {said[-1] if said else proc.returncode}")
    return proc.stdout


def refresh(repo: Path) -> None:
    """The registry's tags as ``origin`` has them now (a stage moved by a person since the clone)."""
    git(["fetch", "-q", "--tags", "--force", "origin"], repo)


def entries(repo: Path) -> dict[str, Entry]:
    """Every registered model: ``gto show --json``."""
    shown = json.loads(gto(["show", "--json"], repo) or "{}")
    # GTO lists every stage in use for each model, unassigned ones as null.
    return {
        name: Entry(name, e.get("version"), {k: v for k, v in (e.get("stage") or {}).items() if v})
        for name, e in shown.items()
    }


def standings(
    repo: Path, evaluate_text: str | None, models: tuple[str, ...], registered: dict[str, Entry] | None = None
) -> list[Standing]:
    """Each model's accuracy in ``evaluate_text`` (this run's metrics/evaluate.json) against its prod version's
    (the metrics/evaluate.json of the commit that version tags), with prod's seed spread where measured."""
    ours, registered = test_accuracies(evaluate_text), entries(repo) if registered is None else registered
    around: dict[str, dict[str, dict[str, Any]] | None] = {}  # read once per commit, for every model it is prod of
    rows = []
    for model in models:
        version = registered[model].stages.get(PROD) if model in registered else None
        prod = spread = None
        if version:
            commit = git(["rev-parse", f"{model}@{version}^{{commit}}"], repo).stdout.strip()
            prod = test_accuracies(read_at(repo, commit, EVALUATE_METRICS)).get(model)
            if commit not in around:
                around[commit] = experiments_around(repo, commit)
            params = flat(params_at(repo, commit))
            spread = seed_spread(around[commit], params, model) if around[commit] is not None else None
        rows.append(Standing(model, ours.get(model), version, prod, spread))
    return rows


def experiments_around(repo: Path, commit: str) -> dict[str, dict[str, Any]] | None:
    """The DVC experiments on ``commit`` (those ``origin`` has too: a sweep pushes them) -- and, for a
    commit that is itself an experiment (a nightly run's), on the commit it ran on -- as
    :func:`~flows.sweep.table.experiments_from_show` gives them; None where DVC cannot list them."""
    git(["fetch", "-q", "origin", "+refs/exps/*:refs/exps/*"], repo, check=False)
    # An experiment's ref is refs/exps/<baseline sha, split 2/38>/<name>; refs/exps/exec/ are DVC's own.
    named = git(["for-each-ref", "--points-at", commit, "--format=%(refname)", "refs/exps"], repo).stdout.split()
    revs = [commit]
    if any(len(ref.split("/")) == 5 and ref.split("/")[2] != "exec" for ref in named):
        revs.append(git(["rev-parse", f"{commit}^"], repo).stdout.strip())
    try:  # one call: -n 2 lists the commit's experiments and its parent's
        show = dvc_out(["exp", "show", "--json", "--rev", commit, "-n", str(len(revs)), "--no-fetch"], repo)
    except StageFailure:  # no spread to show is no reason to fail the comparison
        return None
    shown = json.loads(show or "[]")
    return {name: e for rev in revs for name, e in experiments_from_show(shown, rev).items()}


def seed_spread(
    experiments: Mapping[str, Mapping[str, Any]], params: Mapping[str, Any], model: str
) -> tuple[float, int] | None:
    """(sample sd, n) of ``model``'s test accuracy over the ``experiments`` (as
    :func:`~flows.sweep.table.experiments_from_show` gives them) whose params match ``params`` (the
    commit's, dotted) in every key that trains ``model`` -- ``data.*``, ``train.*``, ``<model>.*`` --
    but ``<model>.seed``; None for fewer than two."""
    relevant = [k for k in params if k.split(".")[0] in ("data", "train", model) and k != f"{model}.seed"]
    accuracies: Sequence[float] = [
        float(e["evaluate"][model]["test_accuracy"])
        for e in experiments.values()
        if all(e["params"].get(k) == params[k] for k in relevant)
        and isinstance((e.get("evaluate") or {}).get(model, {}).get("test_accuracy"), (int, float))
    ]
    return (statistics.stdev(accuracies), len(accuracies)) if len(accuracies) >= 2 else None


def versions_at(repo: Path, commit: str, registered: dict[str, Entry] | None = None) -> dict[str, str]:
    """``{model: "v0.1.0 (prod)"}``: the version of each model registered at ``commit``, with the stages
    it holds."""
    registered = entries(repo) if registered is None else registered
    found: dict[str, str] = {}
    for tag in git(["tag", "--points-at", commit], repo).stdout.split():
        model, at, version = tag.partition("@")
        if at and model in registered:
            stages = [stage for stage, v in registered[model].stages.items() if v == version]
            found[model] = f"{version} ({', '.join(stages)})" if stages else version
    return found


def view(
    repo: Path, evaluate_text: str | None, models: tuple[str, ...]
) -> tuple[list[Standing], dict[str, str], str | None]:
    """What the summaries show of the registry: :func:`standings`, what ``HEAD`` is registered as
    (:func:`versions_at`), and why the registry could not be read -- ``([], {}, why)`` then."""
    try:
        registered = entries(repo)
        return standings(repo, evaluate_text, models, registered), versions_at(repo, "HEAD", registered), None
    except (RegistryError, WorkspaceError) as exc:
        return [], {}, str(exc)


def promote_to_staging(repo: Path, model: str, commit: str) -> str:
    """Register ``commit`` as the next minor version of ``model`` (v0.1.0 when it is the first), assign it
    ``staging``, push both tags to ``origin``; return the version."""
    first = model not in entries(repo)
    bump = ["--version", "v0.1.0"] if first else ["--bump-minor"]
    message = ["-m", f"{model}: a nightly run that beats prod on test accuracy"]
    gto(["register", model, commit, *bump, *message, "--push"], repo)
    version = entries(repo)[model].latest
    if version is None:
        raise RegistryError(f"gto registered {model} at {commit[:12]} but shows no version")
    gto(["assign", model, "--version", version, "--stage", STAGING, *message, "--push"], repo)
    return version
