"""Tensor parallel with ``torch.distributed``: column / row parallel linears and all-reduce.

Every rank holds the whole embedding, norms and LM head, and a 1/N slice of each attention layer
(its heads) and MLP (its intermediate neurons, or each expert's). What to slice is the family's
``tp_plan`` (``models.base.TensorParallelPlan``); this module applies any plan the same way:

* column: the output features of q/k/v (whole heads) and gate/up (neurons) are split;
* row: the input features of the attention output and the MLP down projection are split, the
  partial outputs are summed with one ``all_reduce`` and the bias is added once, after it;
* an MoE sums its experts' partial outputs locally and all-reduces its output once.

Each rank's attention runs on its local heads, so the K/V cache (allocated from the K tensor) holds
``kv_heads / N`` heads per rank and is never gathered. After the all-reduce every rank has the same
hidden state, hence the same logits and the same tokens.

The slices are taken from the loaded weights (``shard_model`` returns, per parameter name, the
function that cuts a full tensor to this rank's part), so a checkpoint is read file by file and
only the local part of each weight is kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..models.base import DiffusionLM, TensorParallelPlan
from .group import join_process_group

MAX_TENSOR_PARALLEL = 64
Take = Callable[[torch.Tensor], torch.Tensor]
"""Cuts a full checkpoint tensor to this rank's part."""


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in the tensor-parallel group (the whole torchrun world)."""

    rank: int
    size: int


def check_size(size: object) -> int:
    """``tensor_parallel`` as an int in [1, 64], else a ValueError naming it."""
    if not (isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_TENSOR_PARALLEL):
        raise ValueError(f"tensor_parallel={size!r}: must be an integer from 1 to {MAX_TENSOR_PARALLEL}")
    return size


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher setting its variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def rank_device(device: torch.device) -> torch.device:
    """A bare ``cuda`` becomes this rank's GPU (``cuda:LOCAL_RANK``): one GPU per rank."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def init_tensor_parallel(size: int, device: torch.device) -> TensorParallel:
    """Join (or initialise: gloo on CPU, nccl on CUDA) the torchrun process group of ``size`` ranks."""
    if not dist.is_available():
        raise ValueError(f"tensor_parallel={size}: this torch build has no torch.distributed")
    if not dist.is_initialized():
        if not launched_by_torchrun():
            raise ValueError(f"tensor_parallel={size} needs one process per rank: launch with "
                             f"torchrun --nproc_per_node {size} -m streaming_dllm ... (or your script)")
        join_process_group(device.type)
    world = dist.get_world_size()
    if world != size:
        raise ValueError(f"tensor_parallel={size}: the process group has {world} ranks; launch with "
                         f"torchrun --nproc_per_node {size}, or pass tensor_parallel={world}")
    return TensorParallel(dist.get_rank(), world)


def is_lead(model: object) -> bool:
    """Whether this process reports for the model: always without tensor parallel, else rank 0
    (every rank computes the same tokens; one prints them)."""
    tp = getattr(model, "tensor_parallel", None)
    return tp is None or tp.rank == 0


class RowParallelLinear(nn.Module):
    """A linear holding a slice of the input features: the partial outputs are summed over the
    ranks with ``all_reduce`` and the (replicated) bias is added once, after the sum."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        dist.all_reduce(y)
        return y if self.bias is None else y + self.bias


def _narrow(t: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    n = t.shape[dim] // size
    return t.narrow(dim, rank * n, n)


def _fused(t: torch.Tensor, segments: tuple[int, ...], rank: int, size: int) -> torch.Tensor:
    """This rank's part of each segment of a fused projection ([q | k | v] rows), concatenated."""
    return torch.cat([_narrow(s, 0, rank, size) for s in t.split(list(segments), dim=0)], dim=0)


def matches(name: str, pattern: str) -> bool:
    """``pattern`` names ``name``, where ``*`` stands for exactly one dotted segment."""
    parts, want = name.split("."), pattern.split(".")
    return len(parts) == len(want) and all(w in ("*", p) for p, w in zip(parts, want, strict=True))


def _find(modules: dict[str, nn.Module], rules: dict[str, str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """(module name, config key) of every module a rule names, in the model's order."""
    keyed = rules if isinstance(rules, dict) else dict.fromkeys(rules, "")
    return [(name, key) for name in modules for pattern, key in keyed.items() if matches(name, pattern)]


def _indivisible(size: int, key: str, what: str) -> ValueError:
    return ValueError(f"tensor_parallel={size}: {key} ({what}) is not divisible by {size}; "
                      f"use a tensor_parallel that divides it")


def check_divisible(model: DiffusionLM, plan: TensorParallelPlan, size: int) -> None:
    """Heads, K/V heads and every split dimension must divide by ``size``; the error names the key."""
    modules = dict(model.named_modules())
    _, heads_key, kv_key = type(model).heads_keys
    for name, _ in _find(modules, plan.heads):
        m = modules[name]
        if m.heads % size:
            raise _indivisible(size, heads_key, f"{m.heads} attention heads")
        if m.kv_heads % size:
            raise _indivisible(size, kv_key, f"{m.kv_heads} K/V heads")
    for rules, dim in ((plan.column, 0), (plan.row, 1), (plan.partial, 1)):
        for name, key in _find(modules, rules):
            n = modules[name].weight.shape[dim]
            if n % size:
                raise _indivisible(size, key, f"{name}: {n} features")


def shard_model(model: DiffusionLM, rank: int, size: int) -> dict[str, Take]:
    """Shard ``model`` in place for ``rank`` of ``size`` as its family's plan says.

    Works on a model built on the meta device (the loader then cuts each checkpoint tensor with
    the returned functions) and on a loaded one (its parameters are cut here).
    """
    plan = type(model).tp_plan
    if plan is None:
        raise ValueError(f"tensor_parallel={size}: the {model.family} family has no tensor-parallel plan")
    check_divisible(model, plan, size)
    modules = dict(model.named_modules())
    heads = [modules[name] for name, _ in _find(modules, plan.heads)]
    if not heads:
        raise ValueError(f"tensor_parallel={size}: the {model.family} plan names no attention modules")
    column, row = partial(_narrow, dim=0, rank=rank, size=size), partial(_narrow, dim=1, rank=rank, size=size)
    takes: dict[str, Take] = {}
    for name, _ in _find(modules, plan.fused_qkv):
        parent = modules[name.rpartition(".")[0]]
        segments = tuple(n * parent.hd for n in (parent.heads, parent.kv_heads, parent.kv_heads))
        _cut(model, name, partial(_fused, segments=segments, rank=rank, size=size), takes, bias=True)
    for name, _ in _find(modules, plan.column):
        _cut(model, name, column, takes, bias=True)
    for name, _ in _find(modules, plan.partial):
        if modules[name].bias is not None:
            raise ValueError(f"tensor_parallel: {name} has a bias; a partial (un-reduced) linear cannot")
        _cut(model, name, row, takes, bias=False)
    for name, _ in _find(modules, plan.row):
        _cut(model, name, row, takes, bias=False)
        linear = model.get_submodule(name)
        _replace(model, name, RowParallelLinear(linear.weight, linear.bias))
    _reduce_partials(model, plan, modules)
    for m in heads:
        m.heads, m.kv_heads = m.heads // size, m.kv_heads // size
    model.tensor_parallel = TensorParallel(rank, size)
    return takes


def _cut(model: nn.Module, name: str, take: Take, takes: dict[str, Take], bias: bool) -> None:
    """Replace the linear's weight (and, if ``bias``, its bias) by this rank's part."""
    linear = model.get_submodule(name)
    attrs = ("weight", "bias") if bias and linear.bias is not None else ("weight",)
    for attr in attrs:
        takes[f"{name}.{attr}"] = take
        local = take(getattr(linear, attr)).clone(memory_format=torch.contiguous_format)
        setattr(linear, attr, nn.Parameter(local, requires_grad=False))
    if isinstance(linear, nn.Linear):
        linear.out_features, linear.in_features = linear.weight.shape


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner), leaf, module)


def _reduce_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(output)
    return output


def _reduce_partials(model: nn.Module, plan: TensorParallelPlan, modules: dict[str, nn.Module]) -> None:
    """One all-reduce on the output of each ``reduce`` module holding partial linears; every
    partial linear must sit under exactly one, or its sum would be missing or doubled."""
    partials = [name for name, _ in _find(modules, plan.partial)]
    covered = dict.fromkeys(partials, 0)
    for name, _ in _find(modules, plan.reduce):
        inside = [p for p in partials if p.startswith(name + ".")]
        if inside:
            modules[name].register_forward_hook(_reduce_output)
            for p in inside:
                covered[p] += 1
    wrong = [p for p, n in covered.items() if n != 1]
    if wrong:
        raise ValueError(f"tensor_parallel plan of {type(model).__name__}: {wrong[0]} is under "
                         f"{covered[wrong[0]]} reduce modules, must be under exactly one")


def local_state(state: dict[str, torch.Tensor], takes: dict[str, Take], device: torch.device
                ) -> dict[str, torch.Tensor]:
    """``state`` with each sharded tensor cut to this rank's part (a copy: the full tensor is freed)."""
    out = {}
    for name, t in state.items():
        if name in takes:
            t = takes[name](t).clone(memory_format=torch.contiguous_format)
        out[name] = t.to(device)
    return out
