"""``streaming-dllm serve --replicas N``: start (or join) Ray, deploy the gateway and N engine
replicas on Ray Serve, and serve until interrupted.

Every flag is checked before Ray starts, with the single server's rules (``settings_from_args``);
the replicas then load the model exactly as ``serve`` does.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from typing import Any

from ..cli.options import require_extra
from ..server.cli import settings_from_args
from ..server.settings import Limits

log = logging.getLogger("streaming_dllm.cluster")
APP_NAME = "streaming-dllm"
BOARD_NAME = "replica-board"
_GATEWAY_SLACK = 64
_OBJECT_STORE_BYTES = 256 * 1024**2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def replica_resources(args: argparse.Namespace,
                      cluster: dict[str, float]) -> tuple[dict[str, Any], int | None]:
    """(Ray actor options of one replica, its torch threads): a GPU each when the cluster has GPUs
    and ``--device`` does not say cpu, else an equal share of the cluster's cores, with one core of
    a share of two or more left to the replica's HTTP and Ray work (measured on 2 cores, one
    replica: 9.8 req/s with 1 torch thread, 7.5 with 2)."""
    device = str(getattr(args, "device", None) or "")
    if cluster.get("GPU", 0) >= 1 and not device.startswith("cpu"):
        return {"num_cpus": 1, "num_gpus": 1}, args.threads
    share = cluster.get("CPU", 1) / args.replicas
    return {"num_cpus": share}, args.threads or max(1, int(share) - 1)


def _check(args: argparse.Namespace) -> Limits:
    """Every flag, as the single server checks it; returns the request limits the replicas get."""
    limits = settings_from_args(args).limits
    if args.port == 0:
        raise ValueError("--port: give a port with --replicas (Ray Serve cannot bind port 0)")
    if (getattr(args, "tensor_parallel", None) or 1) > 1:
        raise ValueError("--tensor-parallel: not with --replicas (a replica is one process); run "
                         "torchrun ... serve --tensor-parallel N for one sharded server")
    for module in ("ray", "ray.serve", "fastapi", "prometheus_client"):
        require_extra(module, "cluster", "serve --replicas")
    _check_local_checkpoint(args.model)
    return limits


def _check_local_checkpoint(name: str) -> None:
    """A built-in name or a folder here is checked before Ray starts (its config names a family we
    know); a hub id is the replicas' to download, where the weights will live."""
    from pathlib import Path

    from ..loading import BUILTINS, CheckpointError, read_config, resolve_checkpoint
    from ..models.registry import family_for

    if name not in BUILTINS and not Path(name).expanduser().exists() and name.count("/") == 1:
        return
    try:
        family_for(read_config(resolve_checkpoint(name)))
    except ValueError as exc:
        msg = str(exc) if isinstance(exc, CheckpointError) else f"{name}: {exc}"
        raise ValueError(f"--model: {msg}") from None


def _deploy(args: argparse.Namespace, lim: Limits, options: dict[str, Any], actor: dict[str, Any]) -> None:
    from ray import serve

    from .deployments import EngineReplica, Gateway

    per_replica = lim.max_rows_in_flight + lim.max_queue
    engine = serve.deployment(EngineReplica, name="engine", num_replicas=args.replicas,
                              ray_actor_options=actor, max_ongoing_requests=per_replica,
                              max_queued_requests=lim.max_queue, health_check_period_s=1,
                              health_check_timeout_s=60,
                              graceful_shutdown_timeout_s=5)
    gateway = serve.deployment(Gateway, name="gateway", num_replicas=1, ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=args.replicas * per_replica + _GATEWAY_SLACK)
    app = gateway.bind(engine.bind(options, BOARD_NAME), options, BOARD_NAME, args.replicas)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)


def _serve_running() -> bool:
    """Whether Ray Serve already runs on the cluster (its controller actor exists)."""
    import ray

    try:
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    except ValueError:
        return False
    return True


def run_serve_ray(args: argparse.Namespace) -> int:
    """Check every flag, start Ray (or join ``--ray-address``), deploy, and serve until SIGINT/SIGTERM."""
    limits = _check(args)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from .board import ReplicaBoard
    from .deployments import BOARD_NAMESPACE

    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    local = args.ray_address is None
    own = {"num_cpus": os.cpu_count() or 1, "object_store_memory": _OBJECT_STORE_BYTES} if local else {}
    try:
        # "local": always a new instance of our own, never the last `ray start` cluster of this machine
        ray.init(address=args.ray_address or "local", namespace=BOARD_NAMESPACE, include_dashboard=False,
                 logging_level=args.log_level.upper(), **own)
    except ConnectionError as exc:
        if local:
            raise ValueError(f"--replicas: could not start a local Ray instance: {exc}") from None
        raise ValueError(f"--ray-address {args.ray_address}: {exc}; a cluster with token authentication "
                         "also needs RAY_AUTH_MODE=token here") from None
    actor, threads = replica_resources(args, ray.cluster_resources())
    options = {k: v for k, v in vars(args).items() if k != "func"} | {"threads": threads}
    signal.signal(signal.SIGTERM, _interrupt)
    board = ray.remote(ReplicaBoard).options(name=BOARD_NAME, num_cpus=0).remote()
    serve_was_up = _serve_running()
    if serve_was_up:
        log.warning("Ray Serve already runs on this cluster: its HTTP proxy's host and port apply, not "
                    "--host/--port; the app %r replaces one of that name", APP_NAME)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        try:
            _deploy(args, limits, options, actor)
        except RuntimeError as exc:
            raise ValueError(f"--replicas: the engine replicas did not start ({exc}); the replica log "
                             "above has the cause") from None
        log.info("serving %s on http://%s:%d with %d replicas (%s each)", args.model, args.host, args.port,
                 args.replicas, actor)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("shutting down")
    finally:
        if serve_was_up:
            serve.delete(APP_NAME)  # the cluster's Serve, and its other apps, stay as they were
        else:
            serve.shutdown()
        ray.kill(board)
        if local:
            ray.shutdown()
    return 0
