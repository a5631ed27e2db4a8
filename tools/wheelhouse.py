"""Every wheel the project needs, from ``uv.lock``, in one folder that installs with no index.

For hosts without internet (common on GPU clusters): ``make wheelhouse`` runs this where PyPI is
reachable, the folder travels, and ``make setup WHEELHOUSE=DIR`` installs from it there. The wheels are
the locked versions for the chosen extras, for a target Python and platform (default: this machine's).
Given the target's ``pip freeze`` (``--have``), packages it already has are left out and the target's
venv sees them (``--system-site-packages``): a GPU host's own CUDA build of JAX stays in charge. A
locked package that publishes no wheel for the target is downloaded as source and built here, which
works for pure-Python packages only (a compiled one fails, naming it).

The folder holds ``requirements.txt`` (the locked pins it serves, with their environment markers) and,
when ``--have`` was given, ``system-packages.txt`` (what was left out, at the target's versions).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from packaging.markers import Marker, default_environment

from tasks.core.errors import StageError

#: What ``make setup WHEELHOUSE=DIR`` needs beside the locked packages: the build backend of the
#: project's own editable install (pyproject.toml's build-system).
BUILD_REQUIREMENTS = ("setuptools>=68",)
REQUIREMENTS = "requirements.txt"
SYSTEM_PACKAGES = "system-packages.txt"
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^ ;]+)")


def canonical(name: str) -> str:
    """A distribution name as pip and PyPI compare them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_requirements(uv: str, extras: list[str]) -> list[str]:
    """The lock's pins for ``extras`` as requirement lines (``name==version ; markers``), without the project."""
    command = [uv, "export", "--frozen", "--no-hashes", "--no-emit-project", "--no-header"]
    for extra in extras:
        command += ["--extra", extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise StageError(f"uv export failed: {done.stderr.strip()}")
    return [line for line in done.stdout.splitlines() if _PIN.match(line)]


def frozen_names(freeze: str) -> dict[str, str]:
    """``pip freeze`` output as {canonical name: version}; lines that pin nothing (``-e``, URLs) are skipped."""
    found = {}
    for line in freeze.splitlines():
        if m := _PIN.match(line.strip()):
            found[canonical(m["name"])] = m["version"]
    return found


def for_target(requirements: list[str], python_version: str | None, platform: str | None) -> list[str]:
    """The pins whose environment markers hold on the target (the lock has per-Python versions, and pip
    would judge the markers by the interpreter it runs on), without their markers."""
    env = default_environment()
    if python_version:
        env.update(python_version=python_version, python_full_version=f"{python_version}.0")
    if platform and (m := re.fullmatch(r"(?:many)?linux\w*?_(x86_64|aarch64|i686|ppc64le|s390x)", platform)):
        env.update(sys_platform="linux", platform_system="Linux", platform_machine=m[1])
    pins = []
    for line in requirements:
        pin, _, marker = line.partition(";")
        if not marker.strip() or Marker(marker.strip()).evaluate(env):
            pins.append(pin.strip())
    return pins


def split_by_target(requirements: list[str], have: dict[str, str]) -> tuple[list[str], list[str]]:
    """(the pins to download, the target's own pins of the packages it already has, noting where the
    lock differs)."""
    wanted, kept = [], []
    for line in requirements:
        pin = _PIN.match(line)
        name = canonical(pin["name"])
        if name not in have:
            wanted.append(line)
        else:
            differs = f"  # uv.lock has {pin['version']}" if have[name] != pin["version"] else ""
            kept.append(f"{name}=={have[name]}{differs}")
    return wanted, kept


def target_options(python_version: str | None, platform: str | None) -> list[str]:
    """pip's options for downloading another interpreter's wheels (none: this interpreter's)."""
    if not python_version and not platform:
        return []
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    options = ["--python-version", version, "--implementation", "cp"]
    # pip takes only the ABIs it is given: the version's own, the stable one (abi3) and pure Python.
    for abi in (f"cp{version.replace('.', '')}", "abi3", "none"):
        options += ["--abi", abi]
    for tag in compatible_platforms(platform or sysconfig.get_platform().replace("-", "_").replace(".", "_")):
        options += ["--platform", tag]
    return options


def compatible_platforms(platform: str) -> list[str]:
    """``platform`` and, for a manylinux tag, every older manylinux its glibc also runs (pip takes only
    the tags it is given, so ``manylinux_2_28`` alone would miss the many ``manylinux2014`` wheels)."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not m:
        return [platform]
    glibc, arch = int(m[1]), m[2]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags = []
    for minor in range(glibc, 4, -1):
        tags.append(f"manylinux_2_{minor}_{arch}")
        if minor in legacy:
            tags.append(f"{legacy[minor]}_{arch}")
    return tags


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def download(lines: list[str], out: Path, target: list[str], wheels_from: Path | None = None) -> None:
    """Each line's wheel for the target into ``out``; a package with no such wheel is built here from source.
    With ``wheels_from`` (a wheelhouse made earlier for the same target) the wheels come from that folder
    alone, with no index: a smaller wheelhouse cut from a full one in seconds."""
    if wheels_from is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as listed:
            listed.write("\n".join(lines) + "\n")
            listed.flush()
            local = ["--no-index", "--find-links", str(wheels_from), "--dest", str(out), *target]
            done = pip("download", "--quiet", "--no-deps", "--only-binary=:all:", *local, "-r", listed.name)
        if done.returncode != 0:
            raise StageError(f"{wheels_from} lacks a wheel the lock needs: {done.stderr.strip()[-500:]}")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listed:
        listed.write("\n".join(lines) + "\n")
        listed.flush()
        if (
            pip(
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                str(out),
                *target,
                "-r",
                listed.name,
            ).returncode
            == 0
        ):
            return
    # One of them has no wheel for the target: find which, one at a time (those already fetched are skipped).
    for line in lines:
        done = pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(out), *target, line)
        if done.returncode == 0:
            continue
        pin = line.split(";")[0].strip()
        with tempfile.TemporaryDirectory() as src:
            fetched = pip("download", "--quiet", "--no-deps", "--no-binary=:all:", "--dest", src, pin)
            built = (
                fetched.returncode == 0
                and pip(
                    "wheel", "--quiet", "--no-deps", "--no-index", "--find-links", src, "--wheel-dir", str(out), pin
                ).returncode
                == 0
            )
        if not built:
            raise StageError(
                f"no wheel of {pin} for the target, and building one here failed: {done.stderr.strip()[-500:]}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.wheelhouse", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to fill (created)")
    parser.add_argument("--uv", default="uv", help="the uv executable that reads uv.lock")
    parser.add_argument("--extras", default="cpu,dev", help="pyproject.toml extras, comma-separated")
    parser.add_argument("--python-version", help="the target's Python, e.g. 3.12 (default: this one)")
    parser.add_argument("--platform", help="the target's platform tag, e.g. manylinux_2_28_x86_64 (default: this one)")
    parser.add_argument("--have", type=Path, help="the target's `pip freeze`: packages it has are left out")
    parser.add_argument("--wheels-from", type=Path, help="take the wheels from this wheelhouse, not from the index")
    args = parser.parse_args(argv)

    locked = locked_requirements(args.uv, [e for e in args.extras.split(",") if e])
    requirements = for_target(locked, args.python_version, args.platform)
    have = frozen_names(args.have.read_text()) if args.have else {}
    wanted, kept = split_by_target(requirements, have)
    args.out.mkdir(parents=True, exist_ok=True)
    target = target_options(args.python_version, args.platform)
    download([*wanted, *BUILD_REQUIREMENTS], args.out, target, args.wheels_from)
    (args.out / REQUIREMENTS).write_text("\n".join(wanted) + "\n")
    if args.have:
        (args.out / SYSTEM_PACKAGES).write_text("\n".join(kept) + "\n")
    wheels = sorted(args.out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{args.out}: {len(wheels)} wheels, {size:.0f} MiB; {len(kept)} locked packages left to the target")


if __name__ == "__main__":
    from tasks.core.cli import run_stage

    run_stage(main)
