"""Model families (architecture only) and their registry."""

from .base import DiffusionLM, FamilyTraits
from .dream import DreamModel
from .llada import LLaDAModel
from .llada2 import LLaDA2Model
from .qwen_bd import FastDLLMv2Model, SDARModel
from .registry import FAMILIES, family_for, register

__all__ = [
    "DiffusionLM", "FamilyTraits", "DreamModel", "LLaDAModel", "LLaDA2Model", "SDARModel", "FastDLLMv2Model",
    "FAMILIES", "family_for", "register",
]
