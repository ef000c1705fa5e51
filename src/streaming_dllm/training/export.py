"""Writing the checkpoint: a plain LLaDA state dict (parametrizations evaluated) and its files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from ..models.llada import LLaDAModel

CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a plain checkpoint has: parametrized weights evaluated, their parts dropped."""
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." not in key:
            state[key] = value
        elif key.endswith(".original"):
            path, rest = key.split(".parametrizations.", 1)
            attr = rest.split(".", 1)[0]
            state[f"{path}.{attr}"] = getattr(model.get_submodule(path), attr)
    # clone: tied weights share storage, and the checkpoint stores each one in full
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def save_checkpoint(model: LLaDAModel, config: dict, out: Path) -> None:
    from safetensors.torch import save_file

    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(plain_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)  # safetensors writes 0600; the file ships in a package


def export_checkpoint(out: Path, dest: Path) -> None:
    """Copy the checkpoint files of ``out`` to ``dest`` (``src/streaming_dllm/builtin`` ships one)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_FILES:
        shutil.copy2(out / name, dest / name)
