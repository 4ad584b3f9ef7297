"""`compare --ray` on a real Ray cluster: a head node with 2 CPUs started inside the test on the loopback
address only (nothing is sent anywhere else), the tiny study sent to it and compared with the in-process
numbers; then a worker killed mid-run: Ray retries the task, the retry resumes from the run's last
checkpoint, and the study's numbers are still identical. The cluster is stopped by signalling the
`ray start --block` process this test started (not `ray stop`, which ends every Ray process of the user)."""
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from test_compare import tiny_lm
from test_lab_study import attempts, kill_one_run_mid_run

from archlab.compare import build_spec, compare

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray: pip install 'archlab[ray]'")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def cluster():
    port = free_port()
    temp = tempfile.mkdtemp(prefix="rl", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           # the workers import this checkout's archlab
           "PYTHONPATH": os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)}
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus", "2",
           "--node-ip-address", "127.0.0.1", "--port", str(port), "--ray-client-server-port", str(free_port()),
           "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(re.sub(r"\x1b\[[0-9;]*m", "", line) for line in proc.stdout),
                     daemon=True).start()
    try:
        deadline = time.time() + 90
        while not any("Ray runtime started" in line for line in output):
            assert proc.poll() is None and time.time() < deadline, "ray start failed:\n" + "".join(output)
            time.sleep(0.1)
        assert any("Local node IP: 127.0.0.1" in line for line in output), "".join(output)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of its session still there
        except ProcessLookupError:
            pass
        shutil.rmtree(temp, ignore_errors=True)


def on_ray(cluster, spec, out):
    from archlab.lab.executors import RayCluster

    executor = RayCluster(cluster, cpus=1)
    try:
        assert executor.name.startswith(f"Ray cluster at {cluster} (2 CPUs")
        return compare(spec, out, quiet=True, executor=executor)
    finally:
        executor.close()


def test_a_study_on_ray_equals_the_in_process_study(cluster, tmp_path):
    spec = build_spec([str(tiny_lm(tmp_path))], vary=["model.position=learned,rope"])
    spec.seeds = 2
    spec.set_budgets("steps", [6])
    here = compare(spec, tmp_path / "here", quiet=True)
    there = on_ray(cluster, spec, tmp_path / "ray")
    assert [r["values"] for r in there["variants"]] == [r["values"] for r in here["variants"]]
    assert all(len(r["values"]) == 2 for r in there["variants"])
    for r in there["results"]:
        runs = attempts(tmp_path / "ray", r["key"])
        assert len(runs) == 1 and runs[0]["pid"] != os.getpid() and runs[0]["threads"] == 1  # a Ray worker ran it


def test_a_worker_killed_mid_run_is_retried_and_the_numbers_do_not_change(cluster, tmp_path):
    spec = build_spec([str(tiny_lm(tmp_path, eval_every=15))])
    spec.seeds = 2
    spec.set_budgets("steps", [120])
    here = compare(spec, tmp_path / "here", quiet=True)
    out = tmp_path / "ray"
    killed: list[str] = []
    killer = threading.Thread(target=kill_one_run_mid_run, args=(out, killed))
    killer.start()
    there = on_ray(cluster, spec, out)
    killer.join()
    assert len(killed) == 1
    retried = attempts(out, killed[0])
    assert len(retried) == 2 and retried[0]["pid"] != retried[1]["pid"]
    assert json.loads((out / "runs" / killed[0] / "result.json").read_text())["attempts"] == 2
    assert there["variants"][0]["values"] == here["variants"][0]["values"]
    assert not there["failed"]
