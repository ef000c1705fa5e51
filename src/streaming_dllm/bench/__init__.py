"""Benchmarks: every decoding method side by side on the same prompts (``streaming-dllm bench``).

``results`` holds the plain data (methods, groups, samples), ``runner`` times interleaved methods,
``metrics`` turns samples into figures, ``suites`` holds the paper-shaped experiments, ``report``
writes Markdown and JSON, ``plots`` the PNG figures.
"""

from .results import Group, Method, MethodResult, Sample

__all__ = ["Group", "Method", "MethodResult", "Sample"]
