"""Where a study's jobs run: in this process (the default), on a local process pool (--workers N), or on a
Ray cluster (--ray auto|ADDRESS). Each calls `done(result)` in this process as results arrive; a job that
fails is a result with status "failed", and a worker that dies is retried, then recorded as failed.

Threads: a pool worker gets cores / N torch threads, a Ray task the CPUs it reserves (--cpus-per-run), so
runs side by side do not oversubscribe the machine. The result of a run does not depend on where it ran;
with the same thread count it is the same to the last bit on CPU.
"""
from __future__ import annotations

import multiprocessing
import os
import socket
from typing import Any, Callable

from ..errors import ConfigError
from .jobs import failed_result, run_job

Done = Callable[[dict[str, Any]], None]


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class InProcess:
    name = "in-process"

    def map(self, jobs: list[dict[str, Any]], done: Done) -> None:
        for job in jobs:
            done(run_job(job))

    def close(self) -> None:
        pass


class Pool:
    """N worker processes (spawned: a forked copy of a process that has started torch's threads can hang)."""

    def __init__(self, workers: int, threads: int | None = None, retries: int = 2):
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        self.workers, self.retries = workers, retries
        self.threads = threads or max(1, available_cores() // workers)
        self.name = f"{workers} local processes x {self.threads} thread{'s' if self.threads > 1 else ''}"

    def map(self, jobs: list[dict[str, Any]], done: Done) -> None:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        attempts: dict[str, int] = {}
        todo = [{**j, "threads": self.threads} for j in jobs]
        while todo:
            with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(run_job, job): job for job in todo}
                todo = []
                for future in as_completed(futures):
                    job = futures[future]
                    try:
                        result = future.result()
                    except Exception as e:  # a worker died (BrokenProcessPool): every unfinished job is retried
                        attempts[job["key"]] = attempts.get(job["key"], 0) + 1
                        if attempts[job["key"]] <= self.retries:
                            todo.append(job)
                            continue
                        result = failed_result(job, f"the worker process died ({type(e).__name__}), "
                                                    f"{self.retries + 1} times")
                    done(result)

    def close(self) -> None:
        pass


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray {address!r}: expected auto or HOST:PORT (the head node's GCS address, e.g. "
                          f"10.0.0.5:6379)")
    return host, int(port)


class RayCluster:
    """Each job is a Ray task reserving `cpus` CPUs, retried on another worker when its worker dies (the
    retry resumes from the run's last checkpoint in the shared comparison folder)."""

    def __init__(self, address: str, cpus: int, retries: int = 3, timeout: float = 10.0):
        if cpus < 1:
            raise ConfigError(f"--cpus-per-run must be at least 1, got {cpus}")
        kwargs: dict[str, Any] = {}
        if address != "auto":
            host, port = parse_address(address)
            try:  # fail fast: ray.init would keep retrying an address where nothing listens
                socket.create_connection((host, port), timeout=timeout).close()
            except OSError as e:
                raise ConfigError(f"--ray {address}: no Ray cluster reachable there within {timeout:g} s "
                                  f"({e.strerror or type(e).__name__}); start one with `ray start --head`") from None
            if host in ("127.0.0.1", "localhost"):
                # a cluster on loopback, this driver on it too: without this (read when ray is imported) Ray
                # replaces 127.0.0.1 by the machine's network address, where the cluster does not listen
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
                kwargs["_node_ip_address"] = "127.0.0.1"
        try:
            import ray
        except ImportError:
            raise ConfigError("--ray needs Ray: pip install 'archlab[ray]'") from None
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR", **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            lines = str(e).splitlines()
            raise ConfigError(f"--ray {address}: cannot connect ({lines[0] if lines else type(e).__name__})") from None
        self.ray, self.cpus = ray, cpus
        self.task = ray.remote(num_cpus=cpus, max_retries=retries)(run_job)
        total = int(ray.cluster_resources().get("CPU", 0))
        self.name = f"Ray cluster at {address} ({total} CPUs, {cpus} per run)"

    def map(self, jobs: list[dict[str, Any]], done: Done) -> None:
        pending = {self.task.remote({**job, "threads": self.cpus}): job for job in jobs}
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job = pending.pop(ref)
                try:
                    result = self.ray.get(ref)
                except Exception as e:  # the task's worker died more often than it was retried
                    lines = str(e).splitlines()
                    result = failed_result(job, f"{type(e).__name__}: {lines[0] if lines else ''}")
                done(result)

    def close(self) -> None:
        self.ray.shutdown()


def make_executor(workers: int | None = None, ray: str | None = None, cpus_per_run: int | None = None):
    if workers is not None and ray is not None:
        raise ConfigError("--workers and --ray are two executors: give one")
    if ray is not None:
        return RayCluster(ray, cpus_per_run or 1)
    if workers is not None:
        return Pool(workers)
    return InProcess()
