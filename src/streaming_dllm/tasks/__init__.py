"""Evaluation tasks shipped with the package (small, seeded, scorable offline)."""

from . import arith

__all__ = ["arith"]
