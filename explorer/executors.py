"""Sweep executors: where the runs of a sweep happen.

Every executor meets one protocol, `map(jobs) -> iterator of rows`, yielding
each row as soon as it is finished so the sweep can store it at once (a kill
then loses at most the runs in flight). `local` runs in this process; `ray`
runs on a Ray cluster (a local one it starts, or an existing one at `address=`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

from explorer.registry import Registry
from explorer.techniques import Technique
from explorer.models import load
from explorer.runs import run


@dataclass(frozen=True)
class Job:
    """One configuration to run, keyed before it runs."""
    model: str
    task: str
    technique: Technique
    n: int
    seed: int
    config_hash: str
    repeats: int = 1
    batch_size: int = 64


@dataclass(frozen=True)
class Failed:
    """A configuration its technique refused for this model (a ValueError), e.g. a draft no smaller
    than its target. The sweep reports it and goes on; it is not stored, so a fixed version runs."""

    job: Job
    error: str


class Executor(Protocol):
    def map(self, jobs: Sequence[Job]) -> Iterator[dict[str, Any] | Failed]: ...


executors: Registry[type] = Registry("executor")


def run_job(job: Job, models: dict) -> dict[str, Any]:
    """Run one job, loading its model once per process (`models` is the cache)."""
    if job.model not in models:
        models[job.model] = load(job.model)
    row = run(models[job.model], job.task, job.technique, n=job.n, seed=job.seed, repeats=job.repeats,
              batch_size=job.batch_size)
    if row["config_hash"] != job.config_hash:
        # The sweep keyed this job before loading the model; a different key here means the
        # weights changed underneath it, and a resume would otherwise re-run it forever.
        raise RuntimeError(f"sweep: {job.model} {job.task} {job.technique!r} was planned as "
                           f"{job.config_hash} but ran as {row['config_hash']}; did the weights change?")
    return row


def try_job(job: Job, models: dict) -> dict[str, Any] | Failed:
    try:
        return run_job(job, models)
    except ValueError as err:  # a refused configuration; any other error is a bug and stops the sweep
        return Failed(job, str(err))


@executors.register("local")
class Local:
    """In this process, one run at a time (torch uses every core for each run)."""
    def __init__(self, address: str | None = None, workers: int | None = None):
        if address is not None:
            raise ValueError(f"address={address!r} is for executor='ray'; the local executor runs in this process")
        if workers not in (None, 1):
            raise ValueError(f"workers={workers!r}; the local executor runs one job at a time (use executor='ray')")
        self.models: dict = {}

    def map(self, jobs: Sequence[Job]) -> Iterator[dict[str, Any] | Failed]:
        for job in jobs:
            yield try_job(job, self.models)


@executors.register("ray")
class Ray:
    """On a Ray cluster: `workers` actors with one CPU each, each keeping its models loaded.

    With `address=None` a local cluster (head plus worker processes on loopback)
    is started and shut down afterwards; with an address (``"127.0.0.1:6379"``,
    ``"ray://host:10001"`` or ``"auto"``) an existing cluster is joined, and left running.
    Rows come back to this process, which stores them, so workers need no shared disk.
    A local cluster listens on loopback only: every server it starts (GCS, raylet, workers,
    object manager, runtime-env agent, autoscaler monitor) binds 127.0.0.1, which
    tests/test_ray_loopback.py checks with `ss -ltn`. Ray turns a loopback `_node_ip_address`
    into the machine's reachable address unless it believes clusters are off, so
    `start_ray` tells it so for the duration of `ray.init` (see `loopback_only`); the token
    stays on as well.
    Workers import this engine through PYTHONPATH (set below), so a remote cluster needs it
    installed at the same path or as a package. Ray's clusters use token auth by default
    (`ray start` and local ones alike, one token in ~/.ray), but a driver sends no token
    unless RAY_AUTH_MODE=token: this executor sets that unless you chose otherwise (set
    RAY_AUTH_MODE=disabled to join a cluster started with auth off).
    """

    def __init__(self, address: str | None = None, workers: int | None = None):
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers={workers!r}; give a positive number of Ray workers, or None for one per CPU")
        if address is not None:
            check_address(address)
        self.address, self.workers = address, workers

    def map(self, jobs: Sequence[Job]) -> Iterator[dict[str, Any] | Failed]:
        ray_defaults()
        import ray
        from ray.util import ActorPool

        started = not ray.is_initialized()
        if started:
            start_ray(self.address, (self.workers or os.cpu_count()) if self.address is None else None)
        actors = []
        try:
            workers = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            actor = ray.remote(num_cpus=1)(Worker)
            actors = [actor.remote() for _ in range(min(workers, max(len(jobs), 1)))]
            pool = ActorPool(actors)
            yield from pool.map_unordered(lambda a, job: a.run.remote(job), list(jobs))
        finally:
            for a in actors:
                ray.kill(a)
            if started:
                ray.shutdown()


class Worker:
    """A Ray actor: one process, one thread for torch, a cache of loaded models."""
    def __init__(self):
        import torch

        # Ray gives each actor one CPU; more torch threads would fight the other actors for cores.
        torch.set_num_threads(1)
        self.models: dict = {}

    def run(self, job: Job) -> dict[str, Any] | Failed:
        return try_job(job, self.models)


def check_address(address: str, timeout: float = 3.0) -> None:
    """Refuse at once an address where no cluster listens (Ray itself retries for minutes)."""
    import socket

    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"address={address!r}; give host:port of a Ray cluster's head, 'ray://host:port' or 'auto'")
    if address == "auto" or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"address={address!r}; give host:port of a Ray cluster's head, e.g. '127.0.0.1:6379', "
                         "'ray://host:10001' or 'auto'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(f"no Ray cluster answers at address={address!r} ({err.strerror or err}); start one "
                              "with `ray start --head`, check the address, or leave it out for a local cluster") from None


def ray_defaults() -> None:
    """Environment Ray reads when it is first imported in a process, so set before that."""
    import sys

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a workshop tool phones nobody
    # Token auth, as Ray's clusters default to (one token in ~/.ray for `ray start` and local
    # clusters alike); a driver otherwise sends none and cannot join a `ray start` cluster.
    # Only before Ray's first import: a process that imported it already has its mode, and a
    # local cluster started with another mode than its driver's would refuse that driver.
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def start_ray(address: str | None, num_cpus: int | None, attempts: int = 3) -> None:
    """`ray.init`, tried again when a local node is slow to come up.

    Ray gives a starting node a fixed 30 s to register; on a laptop whose cores
    are busy its agents can take longer to import, and a second try (with their
    imports now cached) usually makes it.
    """
    ray_defaults()
    import ray

    for attempt in range(attempts):
        try:
            if address:  # an existing cluster's workers get what they need through the job's runtime_env
                where = {"runtime_env": {"env_vars": worker_env()}}
            else:
                # A local cluster stays on loopback: nothing of a laptop's sweep listens on its network.
                # Its workers inherit this process's environment, so no runtime_env: Ray then hands an
                # actor a worker it prestarted at init (1.6 s to the first job here, not 4.5 s).
                os.environ.update(worker_env())
                where = {"_node_ip_address": "127.0.0.1"}
            with loopback_only(address is None):
                ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, **where)
            return
        except Exception as err:  # Ray raises a bare Exception for this
            if address and not isinstance(err, (ValueError, TypeError)):
                # ConnectionError is an OSError: the CLI prints it as one line, with the fix
                raise ConnectionError(f"could not join the Ray cluster at address={address!r} "
                                      f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                                      "check the address and that the cluster is up, or leave the address "
                                      "out for a local cluster") from err
            if "timed out during startup" not in str(err) or attempt == attempts - 1:
                raise
            ray.shutdown()


class loopback_only:
    """While a local cluster starts, make Ray keep 127.0.0.1 as the node address.

    `ray.init(_node_ip_address="127.0.0.1")` alone is not enough: Ray replaces a loopback
    address by the machine's reachable one (`services.resolve_ip_for_localhost`), so its
    servers bind every interface or the network address. It keeps loopback when it believes
    multi-node clusters are off (`ray_constants.ENABLE_RAY_CLUSTER`, what it does on macOS
    and Windows), which is what this switches for the duration of `ray.init`. A Ray without
    that switch is told nothing, and the ss test would then fail and say so.
    """

    def __init__(self, local: bool):
        self.local = local
        self.saved = None

    def __enter__(self):
        if self.local:
            try:
                from ray._private import ray_constants
            except ImportError:  # pragma: no cover - another Ray layout: the ss test will say so
                return self
            self.module = ray_constants
            self.saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
            if self.saved is not None:
                ray_constants.ENABLE_RAY_CLUSTER = False
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            self.module.ENABLE_RAY_CLUSTER = self.saved
        return False


def worker_env() -> dict[str, str]:
    """What a worker process needs to import this engine and stay offline like the driver."""
    package_root = str(Path(__file__).resolve().parent.parent)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    path = os.pathsep.join(paths if package_root in paths else [package_root, *paths])
    env = {"PYTHONPATH": path}
    for name in ("HF_HUB_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM", "EXPLORER_STORE"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def get(name: str | type, *, address: str | None = None, workers: int | None = None) -> Executor:
    if not isinstance(name, str) or name not in executors:
        raise ValueError(f"executor={name!r}; valid: {', '.join(map(repr, executors.names()))}")
    return executors.get(name)(address=address, workers=workers)
