"""Shared test services: one local Ray cluster for the whole session.

CI (``.ci/run``) starts a head node before the tests and exports ``RAY_ADDRESS``; then every pytest
worker joins it. Without one, the first worker that needs Ray starts a head node (``ray start``,
under a file lock keyed by the session: the controller's pid, inherited by the xdist workers), the
other workers join it, and the controlling process stops it when the session ends. Never one
cluster per worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

RAY_CPUS = 2


def _address_file() -> Path:
    return Path(tempfile.gettempdir()) / f"tokcal-test-ray-{os.getuid()}-{os.environ['TOKCAL_TEST_SESSION']}"


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller; xdist workers inherit its environment
        os.environ.setdefault("TOKCAL_TEST_SESSION", str(os.getpid()))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller stops the cluster this session started (workers leave it running)."""
    if hasattr(session.config, "workerinput"):
        return
    path = _address_file()
    if path.exists():
        subprocess.run([_ray_cli(), "stop", "--force"], capture_output=True, timeout=120,
                       env={**os.environ, "RAY_ADDRESS": path.read_text().strip()})
        path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def ray_cluster(request: pytest.FixtureRequest):
    """``ray`` connected to the session's cluster (module ``ray``); skips when ray is not installed."""
    ray = pytest.importorskip("ray")
    from filelock import FileLock

    address = os.environ.get("RAY_ADDRESS")
    if not address:
        path = _address_file()
        with FileLock(str(path) + ".lock", timeout=300):
            if not path.exists():
                port = 20000 + os.getpid() % 20000
                r = subprocess.run([_ray_cli(), "start", "--head", f"--port={port}", f"--num-cpus={RAY_CPUS}",
                                    "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
                                   capture_output=True, text=True, timeout=240)
                if r.returncode != 0:
                    pytest.fail(f"ray start failed: {r.stderr[-2000:]}")
                path.write_text(f"127.0.0.1:{port}")
            address = path.read_text().strip()
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    yield ray
    ray.shutdown()
