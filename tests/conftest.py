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
    """The controller stops the cluster this session started (workers leave it running): its process
    group, never ``ray stop`` (which ends every Ray process of the user, other sessions' too)."""
    if hasattr(session.config, "workerinput"):
        return
    path = _address_file()
    if path.exists():
        _, pgid = path.read_text().split()
        _stop_group(int(pgid))
        path.unlink(missing_ok=True)


def _stop_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM to the process group of ``ray start`` (GCS, raylet and their helpers; the workers end with
    the raylet), SIGKILL to what is left after ``grace`` seconds."""
    import signal
    import time

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            time.sleep(0.2)
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return


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
                # its own session: the head's processes form one process group, stopped by its id
                r = subprocess.Popen([_ray_cli(), "start", "--head", f"--port={port}", f"--num-cpus={RAY_CPUS}",
                                      "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
                out, _ = r.communicate(timeout=240)
                if r.returncode != 0:
                    _stop_group(r.pid)
                    pytest.fail(f"ray start failed: {out[-2000:]}")
                path.write_text(f"127.0.0.1:{port} {r.pid}")
            address = path.read_text().split()[0]
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    yield ray
    ray.shutdown()
