"""Command line: ``streaming-dllm generate | serve | bench``.

``options`` is the front-end kit every command uses (model flags, decoding flags,
``config_from_args``, loading, one-line errors); ``main`` builds the parser. This package's
``__init__`` imports nothing else, so front ends can import ``cli.options`` without a circle.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``streaming-dllm`` command."""
    from .commands import main as run

    return run(argv)
