"""Registry of model families, keyed by what a checkpoint's config.json says.

Adding a family is one new module with a ``DiffusionLM`` subclass plus one ``register`` call.
"""

from __future__ import annotations

from typing import Any

from .base import DiffusionLM
from .dream import DreamModel
from .llada import LLaDAModel
from .llada2 import LLaDA2Model
from .qwen_bd import FastDLLMv2Model, SDARModel

FAMILIES: dict[str, type[DiffusionLM]] = {}


def register(cls: type[DiffusionLM]) -> type[DiffusionLM]:
    FAMILIES[cls.family] = cls
    return cls


def family_for(config: dict[str, Any]) -> type[DiffusionLM]:
    """The family whose ``matches`` accepts this config, or a ValueError listing what is known."""
    for cls in FAMILIES.values():
        if cls.matches(config):
            return cls
    raise ValueError(
        f"unsupported model: config.json has model_type={config.get('model_type')!r}, "
        f"architectures={config.get('architectures')!r}; supported families: {sorted(FAMILIES)}"
    )


register(LLaDAModel)
register(DreamModel)
register(SDARModel)
register(FastDLLMv2Model)
register(LLaDA2Model)
