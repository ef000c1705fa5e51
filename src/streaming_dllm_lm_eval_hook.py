"""Startup hook that lets the plain ``lm_eval`` command find installed model plugins.

lm-evaluation-harness (up to 0.4.13) keeps a registry that accepts lazy entry points but never
reads the ``lm_eval.models`` entry-point group that plugin packages declare. The
``streaming_dllm_lm_eval.pth`` file installed with streaming-dllm imports this module at
interpreter start. It only watches for ``lm_eval.models``: right after the harness has registered
its own models, every ``lm_eval.models`` entry point whose name is still free is added as a lazy
``"module:object"`` placeholder, so nothing is imported until a user asks for that model, and
built-in models are never shadowed. Standard library only, so it costs nothing at startup; any
failure is reported as a warning and never breaks the harness.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

ENTRY_POINT_GROUP = "lm_eval.models"
WATCHED = "lm_eval.models"


def register_entry_points() -> list[str]:
    """Add each ``lm_eval.models`` entry point the harness registry lacks; returns the names added."""
    from importlib.metadata import entry_points

    from lm_eval.api.registry import model_registry

    added = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in model_registry:
            model_registry.register(ep.name, target=ep.value)
            added.append(ep.name)
    return added


def _register_quietly() -> None:
    try:
        register_entry_points()
    except Exception as exc:  # the harness must keep working whatever a plugin declares
        warnings.warn(f"streaming-dllm: could not register lm_eval model plugins: {exc}", stacklevel=2)


class _Watcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of ``lm_eval.models`` to register afterwards."""

    def find_spec(self, name, path, target=None):
        if name != WATCHED:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run = spec.loader.exec_module

            def exec_module(module, _run=run):
                _run(module)
                _register_quietly()

            spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Watch for the harness (or register at once if it is already imported)."""
    if WATCHED in sys.modules:
        _register_quietly()
    elif not any(isinstance(f, _Watcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _Watcher())
