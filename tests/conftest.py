"""Shared fixtures: a small CIFAR-format archive, the real one where present, a temporary DVC repo, and the
tiny pipeline trained once per test run (whose DVC cache restores its stages in any other test repo); and the
tiers: the marks ``e2e`` and ``server`` keep a test out of ``make test-fast``, and a test that runs the real
pipeline or starts a server without its mark fails."""

from __future__ import annotations

import atexit
import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tasks.core.atomic import write_json
from tasks.core.params import DataParams, ValidateParams, load
from tasks.data.archive import read_archive
from tasks.data.splits import facts, make_splits, write_splits
from tasks.data.validation import validate

from tests import s3_server
from tests.cifar_archive import make_archive

REPO = Path(__file__).resolve().parent.parent
REAL_ARCHIVE = Path(os.environ.get("CIFAR10_ARCHIVE", REPO.parent / "shared/data/cifar-10/cifar-10-python.tar.gz"))
REAL_SHA256 = "74d36e93f7daa4ade4876a51e01bcd2ab1c202d05eb6cb36d9105e3144bc10c4"
#: What a test repo needs from this checkout to run the pipeline.
PROJECT_FILES = ("tasks", "dvc.yaml", "params.yaml", ".dvcignore")

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Without credentials botocore would ask the cloud's metadata address for some: never, here.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def shared_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every pytest-xdist worker of this test run sees (each worker's base temp is inside it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def built_once(folder: Path) -> Iterator[bool]:
    """Hold ``folder``'s lock (one xdist worker at a time); yield whether it still has to be built. The
    builder's block must end in :func:`mark_built`; a builder that fails leaves it to the next one."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield not (folder / ".built").exists()


def mark_built(folder: Path) -> None:
    (folder / ".built").touch()


@pytest.fixture(scope="session")
def fixture_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 400-image CIFAR-format archive (300 train in 5 batches, 100 test) and its sha256: one file, at one
    path, for every worker of the test run, so the ``data.url`` and ``data.sha256`` params are the same in
    every test repo and DVC's run-cache can serve one repo's stages to another."""
    folder = shared_tmp(tmp_path_factory) / "archive"
    path = folder / "cifar-10-python.tar.gz"
    with built_once(folder) as building:
        if building:
            shutil.rmtree(folder, ignore_errors=True)
            make_archive(path)
            mark_built(folder)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3_server.S3Server]:
    """A real S3-protocol object store on 127.0.0.1 (SeaweedFS, authentication on) for this worker's tests;
    each test makes its own bucket."""
    server = s3_server.start(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()


def add_s3_remote(repo: Path, server: s3_server.S3Server, url: str, name: str = "shared", local: bool = False) -> None:
    """The team setup of docs/orchestration.md: an ``s3://`` default remote and its endpoint (committed
    unless ``local``), the credentials in ``.dvc/config.local``."""
    where = ["--local"] if local else []
    dvc("remote", "add", *where, "-d", name, url, cwd=repo)
    dvc("remote", "modify", *where, name, "endpointurl", server.endpoint, cwd=repo)
    dvc("remote", "modify", "--local", name, "access_key_id", server.access_key, cwd=repo)
    dvc("remote", "modify", "--local", name, "secret_access_key", server.secret_key, cwd=repo)


@pytest.fixture(scope="session")
def real_archive() -> Path:
    if not REAL_ARCHIVE.is_file():
        if os.environ.get("CIFAR10_REQUIRE_REAL"):
            pytest.fail(f"CIFAR10_REQUIRE_REAL is set but {REAL_ARCHIVE} is missing")
        pytest.skip(f"real CIFAR-10 archive not found at {REAL_ARCHIVE}")
    return REAL_ARCHIVE


# -- tiers: `make test-fast` leaves out the tests marked e2e or server ---------------------------------

#: The marks that keep a test out of the fast tier, slowest first: files holding such tests start first, then
#: the files that run training stages (the ``workspace`` fixture), so the run does not end on one busy worker
#: while the other idles. Within a tier, files that wait for the trained pipeline come after those that do
#: not, so one worker has other work while the first builds it.
SLOW_TIERS = ("server", "e2e")
TRAINING_FIXTURE = "workspace"
_current: pytest.Item | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    global _current
    _current = item


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def tier(item: pytest.Item) -> int:
        marks = {m.name for m in item.iter_markers()}
        if (found := next((i for i, name in enumerate(SLOW_TIERS) if name in marks), None)) is not None:
            return found
        return len(SLOW_TIERS) + (TRAINING_FIXTURE not in getattr(item, "fixturenames", ()))

    tiers: dict[Path, int] = {}
    waits: dict[Path, bool] = {}
    for item in items:
        tiers[item.path] = min(tiers.get(item.path, len(SLOW_TIERS) + 1), tier(item))
        waits[item.path] = waits.get(item.path, False) or "trained_pipeline" in getattr(item, "fixturenames", ())
    items.sort(key=lambda item: (tiers[item.path], waits[item.path]))  # stable: a file's tests keep their order


def require_mark(mark: str, what: str) -> None:
    """Fail the running test if it does ``what`` (slow) without carrying ``mark`` (so the fast tier runs it)."""
    if _current is not None and _current.get_closest_marker(mark) is None:
        pytest.fail(f"{_current.nodeid} {what} but is not marked @pytest.mark.{mark}", pytrace=False)


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: this interpreter's bin first, so `python` in dvc.yaml is ours."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = ""
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    if cmd[0] == "make":
        require_mark("e2e", "runs make")
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(*args: str, cwd: Path, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    if args[:1] == ("repro",) or args[:2] == ("exp", "run"):
        require_mark("e2e", f"runs dvc {' '.join(args[:2])}")
    return run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=check, timeout=timeout)


def set_params(repo: Path, **sections: dict) -> None:
    """Merge ``{section: {key: value}}`` into the repo's params.yaml."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        params.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def params_section(name: str, **changes: object) -> dict:
    """This checkout's ``params.yaml`` section ``name`` with ``changes``: complete, as a stage reads it."""
    return {**yaml.safe_load((REPO / "params.yaml").read_text())[name], **changes}


def copy_project(repo: Path) -> Path:
    """A new folder ``repo`` holding what this checkout's pipeline needs to run (code, dvc.yaml, params)."""
    repo.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, repo / name)
    return repo


@functools.cache
def _empty_git_dvc_repo() -> Path:
    """What ``git init`` and ``dvc init`` (analytics off) make in an empty folder, made once per process:
    each ``dvc`` command pays an interpreter's start, and a test run makes dozens of repos."""
    folder = Path(tempfile.mkdtemp(prefix="git-dvc-init-"))
    atexit.register(shutil.rmtree, folder, True)
    run(["git", "init", "-q"], cwd=folder)
    dvc("init", "-q", cwd=folder)
    dvc("config", "core.analytics", "false", cwd=folder)
    return folder


def init_git_dvc(repo: Path) -> Path:
    """Make ``repo`` a git + DVC repository, as ``git init`` then ``dvc init`` would (files already there, such as
    a ``.dvcignore``, are kept)."""
    made = _empty_git_dvc_repo()
    for name in (".git", ".dvc"):
        shutil.copytree(made / name, repo / name, ignore=shutil.ignore_patterns("tmp", "cache"))
    if not (repo / ".dvcignore").exists():
        shutil.copy2(made / ".dvcignore", repo / ".dvcignore")
    return repo


def make_dvc_repo(repo: Path, fixture_archive: tuple[Path, str]) -> Path:
    """A new git + DVC repo at ``repo`` holding this project's pipeline, pointed at the fixture archive."""
    copy_project(repo)
    archive, sha = fixture_archive
    set_params(repo, data={"url": str(archive), "sha256": sha})
    init_git_dvc(repo)
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "init"], cwd=repo)
    return repo


@pytest.fixture
def dvc_repo(tmp_path: Path, fixture_archive: tuple[Path, str]) -> Path:
    """A fresh git + DVC repo holding this project's pipeline, pointed at the fixture archive."""
    return make_dvc_repo(tmp_path / "repo", fixture_archive)


#: Params that make both training stages take seconds on the fixture archive.
TINY_TRAINING: dict[str, dict] = {
    "alexnet": {"width": 0.0625, "epochs": 2, "batch_size": 32, "warmup_epochs": 1, "jit_compile": False},
    "vgg16": {
        "weights": "none",
        "width": 0.0625,
        "epochs": 2,
        "head_epochs": 1,
        "batch_size": 32,
        "jit_compile": False,
    },
}
#: The test pipeline: tiny training and a short latency measurement. One definition for every test that runs
#: the pipeline, so their stages share DVC run-cache keys with :func:`trained_pipeline`'s.
TINY: dict[str, dict] = {**TINY_TRAINING, "evaluate": {"latency_repeats": 2}}


def tiny_training(repo: Path) -> None:
    """Shrink the pipeline of the repo at ``repo`` to test size (:data:`TINY`)."""
    set_params(repo, **TINY)


def commit_all(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", message], cwd=repo)


@dataclass(frozen=True)
class TrainedPipeline:
    """The tiny pipeline, run once for the test run by the real ``dvc repro``: its repo and what it printed."""

    repo: Path
    log: str

    @property
    def cache(self) -> Path:
        return self.repo / ".dvc/cache"

    def seed(self, repo: Path) -> Path:
        """Give ``repo`` a copy of this pipeline's DVC cache and run-cache: its ``dvc repro`` of the same
        stages with the same params restores them instead of running them."""
        shutil.copytree(self.cache, repo / ".dvc/cache", dirs_exist_ok=True)
        return repo


@pytest.fixture(scope="session")
def trained_pipeline(tmp_path_factory: pytest.TempPathFactory, fixture_archive: tuple[Path, str]) -> TrainedPipeline:
    """Every stage of the tiny pipeline, trained once for the whole test run (all xdist workers)."""
    folder = shared_tmp(tmp_path_factory) / "trained-pipeline"
    with built_once(folder) as building:
        if building:
            shutil.rmtree(folder, ignore_errors=True)
            repo = make_dvc_repo(folder / "repo", fixture_archive)
            tiny_training(repo)
            commit_all(repo, "tiny")
            done = dvc("repro", cwd=repo)
            (folder / "repro.log").write_text(done.stdout + done.stderr)  # DVC's lines, then the stages' logs
            mark_built(folder)
    return TrainedPipeline(folder / "repo", (folder / "repro.log").read_text())


@pytest.fixture
def seeded_repo(dvc_repo: Path, trained_pipeline: TrainedPipeline) -> Path:
    """A fresh repo of the tiny pipeline whose DVC cache holds what :func:`trained_pipeline` trained."""
    tiny_training(dvc_repo)
    commit_all(dvc_repo, "tiny")
    return trained_pipeline.seed(dvc_repo)


TEST_DATA = DataParams(
    url="x",
    sha256="0" * 64,
    val_fraction=0.1,
    seed=42,
    limit_train=None,
    limit_test=None,
    download_attempts=5,
    download_backoff=2.0,
    download_deadline=1800.0,
)


@pytest.fixture(scope="session")
def workspace(fixture_archive: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stage working directory with prepared, validated fixture data and tiny training params."""
    work = tmp_path_factory.mktemp("train")
    data = read_archive(fixture_archive[0])
    splits = make_splits(data, TEST_DATA)
    write_splits(splits, facts(splits, data, TEST_DATA), work / "data/prepared")
    write_json(
        work / "reports/validation.json",
        validate(work / "data/prepared", TEST_DATA, load(ValidateParams, REPO / "params.yaml")),
    )
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY_TRAINING.items():
        params[section].update(values)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


def copy_of(workspace: Path, tmp_path: Path, **changes: dict) -> Path:
    work = tmp_path / "work"
    shutil.copytree(workspace, work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


def stage(module: str, cwd: Path, backend: str = "tensorflow", **popen: object) -> subprocess.Popen[str]:
    env = subprocess_env() | {"PYTHONPATH": str(REPO), "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen(
        [sys.executable, "-m", module],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )  # type: ignore[call-overload]


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


# -- a real full disk: a small tmpfs in a user namespace (no root needed) ----------------------------------


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True)
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="no user namespace to mount a small tmpfs in")


def stage_on_small_disk(module: str, work: Path, folder: str, size: str, fill: bool = False) -> tuple[int, str]:
    """Run ``module`` in ``work`` with ``folder`` on a tmpfs of ``size`` holding a copy of what the folder
    holds (mounted for that process only, in a user namespace: a real full disk without root); ``fill``:
    full from the start."""
    (work / folder).mkdir(parents=True, exist_ok=True)
    filler = f'{{ cat /dev/zero > "{folder}/filler" 2>/dev/null || true; }} && ' if fill else ""
    script = (
        f'copy=$(mktemp -d) && cp -a "{folder}/." "$copy" && mount -t tmpfs -o size={size} tmpfs "{folder}" && '
        f'cp -a "$copy/." "{folder}" && {filler}exec "{sys.executable}" -m {module}'
    )
    env = subprocess_env() | {"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    return done.returncode, done.stdout + done.stderr
