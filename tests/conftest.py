"""Shared test helpers. Real-data tests skip locally when the data is absent, but fail in CI
(ARCHLAB_REQUIRE_DATA=1), so a missing Debian package can never turn a test into a silent skip."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def require_data(available: bool, what: str) -> None:
    if available:
        return
    msg = f"real data missing: {what}"
    if os.environ.get("ARCHLAB_REQUIRE_DATA") == "1":
        pytest.fail(msg + " (ARCHLAB_REQUIRE_DATA=1)")
    pytest.skip(msg)


def require_path(path: str | Path, package: str) -> Path:
    path = Path(path)
    require_data(path.exists(), f"{path} (Debian package {package})")
    return path


def require_command(cmd: str, package: str) -> str:
    found = shutil.which(cmd)
    require_data(found is not None, f"command {cmd!r} (Debian package {package})")
    return found


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def torchrun(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc_per_node 2 ARGS`, bounded: a hang kills the whole
    process group (torchrun and its workers) and fails the test instead of eating the CI's time."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout:.0f} s: {' '.join(args)}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
