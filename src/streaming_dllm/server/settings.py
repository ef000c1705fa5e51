"""Server settings: the served model's name, the default decoding config and every limit."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import PRESETS, DecodeConfig


@dataclass
class Limits:
    """Bounds enforced on every request; a request outside them is rejected, never clipped.

    ``default_max_tokens`` (None = min(128, max_tokens)) applies to requests that give none.
    Concurrency is bounded by ``max_batch_size`` rows decoding plus ``max_queue`` requests
    waiting; a request that finds the queue full is answered 429 at once.
    """

    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 2048
    max_tokens: int = 1024
    default_max_tokens: int | None = None
    max_n: int = 8
    max_prompts: int = 8
    max_stop: int = 4
    max_stop_chars: int = 64
    max_batch_size: int = 16
    max_queue: int = 64
    batch_wait_ms: float = 5.0
    max_block_length: int = 256
    max_window: int = 4096
    max_temperature: float = 2.0
    methods: tuple[str, ...] = tuple(PRESETS)

    def __post_init__(self) -> None:
        if self.default_max_tokens is None:
            self.default_max_tokens = min(128, self.max_tokens)


@dataclass
class ServerSettings:
    """What the app serves and how.

    ``method_overrides`` are knobs set for the default method only (e.g. ``--window``);
    ``shared_overrides`` apply to every method a request may pick (e.g. ``--block-length``).
    """

    model_name: str = "builtin"
    method: str = "streaming"
    shared_overrides: dict = field(default_factory=dict)
    method_overrides: dict = field(default_factory=dict)
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)

    def base_config(self, method: str | None = None) -> DecodeConfig:
        """The server's config for ``method`` (its default method when None).

        ``gen_length`` is one block here; each request sets its own from ``max_tokens``.
        """
        method = method or self.method
        knobs = {**self.shared_overrides, **(self.method_overrides if method == self.method else {})}
        block = knobs.get("block_length", DecodeConfig.block_length)
        if isinstance(block, int) and block > 0:
            knobs.setdefault("gen_length", block)
        return DecodeConfig.preset(method, **knobs)

    def validate(self) -> None:
        """Fail at start-up, not on the first request, when the defaults break a rule."""
        if self.method not in PRESETS:
            raise ValueError(f"method: unknown method {self.method!r}; choose one of {sorted(PRESETS)}")
        unknown = set(self.limits.methods) - set(PRESETS)
        if unknown:
            raise ValueError(f"methods: unknown method(s) {sorted(unknown)}")
        if self.method not in self.limits.methods:
            raise ValueError(f"method: the default method {self.method!r} is not among the allowed methods")
        lim = self.limits
        for name in ("max_body_bytes", "max_prompt_tokens", "max_tokens", "max_n", "max_prompts",
                     "max_batch_size", "max_block_length"):
            if getattr(lim, name) < 1:
                raise ValueError(f"{name}: must be >= 1")
        if lim.max_queue < 0 or lim.batch_wait_ms < 0:
            raise ValueError("max_queue and batch_wait_ms must be >= 0")
        if not 1 <= lim.default_max_tokens <= lim.max_tokens:
            raise ValueError(f"default_max_tokens: must be in [1, max_tokens={lim.max_tokens}]")
        for method in lim.methods:
            self.base_config(method)
