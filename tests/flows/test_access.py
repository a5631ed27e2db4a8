"""Deployed flow runs accept only the folders and git remotes their deployment allows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flows.access import REMOTES_VARIABLE, ROOTS_VARIABLE, AccessDenied, check
from tests.conftest import run


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "checkout"
    repo.mkdir()
    run(["git", "init", "-q"], cwd=repo)
    run(["git", "remote", "add", "origin", "https://git.example.invalid/team/cifar10.git"], cwd=repo)
    return repo


def test_folders_inside_the_checkout_are_allowed(checkout: Path) -> None:
    check(
        {"repo_dir": checkout, "workspace": checkout / ".dvc/tmp/nightly/n", "cache_dir": None},
        checkout=checkout,
        deployed=True,
    )


def test_a_folder_elsewhere_is_refused_with_what_to_do(checkout: Path, tmp_path: Path) -> None:
    for outside in (tmp_path / "elsewhere", checkout / ".." / "elsewhere", Path("/")):
        with pytest.raises(AccessDenied) as caught:
            check({"repo_dir": outside}, checkout=checkout, deployed=True)
        message = str(caught.value)
        assert f"parameter repo_dir={str(outside)!r} is outside the folders this deployment allows" in message
        assert str(checkout) in message and ROOTS_VARIABLE in message


def test_roots_the_administrators_list_are_allowed(
    checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch, other = tmp_path / "scratch", tmp_path / "other"
    monkeypatch.setenv(ROOTS_VARIABLE, os.pathsep.join([str(scratch), str(other)]))
    check({"workspace_root": scratch / "sweeps", "cache_dir": other}, checkout=checkout, deployed=True)
    with pytest.raises(AccessDenied):
        check({"workspace_root": tmp_path / "scratch-not"}, checkout=checkout, deployed=True)


def test_git_remotes(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check({}, {"git_url": "https://git.example.invalid/team/cifar10.git"}, checkout=checkout, deployed=True)
    check({}, {"git_url": str(checkout)}, checkout=checkout, deployed=True)  # a sweep clones its own checkout
    check({}, {"git_url": None}, checkout=checkout, deployed=True)  # the default: the checkout's origin
    for url in ("https://evil.example.invalid/x.git", "git@evil.example.invalid:x.git", "/srv/other.git", "."):
        with pytest.raises(AccessDenied, match=f"parameter git_url={url!r} is not a git remote this deployment allows"):
            check({}, {"git_url": url}, checkout=checkout, deployed=True)
    monkeypatch.setenv(REMOTES_VARIABLE, "https://mirror.example.invalid/cifar10.git /srv/other.git")
    check({}, {"git_url": "/srv/other.git"}, checkout=checkout, deployed=True)


def test_a_flow_run_without_a_deployment_is_not_checked(tmp_path: Path) -> None:
    check({"repo_dir": "/"}, {"git_url": "https://anywhere.example.invalid/x.git"}, deployed=False)


def test_a_host_without_git_checks_folders_and_listed_remotes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No git program at all (a GPU host may lack it): the checkout has no origin, and the rules still hold."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs-here"))
    monkeypatch.setenv(REMOTES_VARIABLE, "https://mirror.example.invalid/cifar10.git")
    check(
        {"repo_dir": checkout},
        {"git_url": "https://mirror.example.invalid/cifar10.git"},
        checkout=checkout,
        deployed=True,
    )
    with pytest.raises(AccessDenied, match="not a git remote this deployment allows"):
        check({}, {"git_url": "https://evil.example.invalid/x.git"}, checkout=checkout, deployed=True)
