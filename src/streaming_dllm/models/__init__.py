"""Model families (architecture only) and their registry."""

from .base import DiffusionLM, FamilyTraits
from .dream import DreamModel
from .llada import LLaDAModel
from .registry import FAMILIES, family_for, register

__all__ = ["DiffusionLM", "FamilyTraits", "DreamModel", "LLaDAModel", "FAMILIES", "family_for", "register"]
