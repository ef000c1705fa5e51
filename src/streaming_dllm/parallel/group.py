"""Joining torchrun's process group once per process, and leaving it cleanly at exit.

A gloo process group that is still alive when the interpreter tears down can abort the process
("terminate called without an active exception") from one of its background threads, so a run
whose work all succeeded would exit with SIGABRT. Whoever creates the group here also destroys it
at exit, after the work and before the interpreter's teardown.
"""

from __future__ import annotations

import atexit

import torch.distributed as dist


def join_process_group(device_type: str) -> None:
    """Initialise the default group (nccl for CUDA, gloo otherwise) unless one exists; the group
    created here is destroyed at interpreter exit."""
    if dist.is_initialized():
        return
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    atexit.register(_leave)


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
