"""Server settings: the served model's name, the default decoding config and every limit.

``ServerSettings.decode_config`` is the one place a request's ``DecodeConfig`` is built (the
preset, the server's knobs, the request's knobs, ``max_tokens`` rounded up to whole blocks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..config import MAX_GEN_LENGTH, PRESETS, DecodeConfig, gen_length_for

BATCHING = ("continuous", "same-settings", "serial")
"""Worker modes: continuous batching (any settings share each step), batches of identical
settings run to their end, or one request at a time (for measurement)."""
POLICIES = ("split", "buckets", "joint")


class SettingsError(ValueError):
    """A server setting out of its bounds; ``field`` names the setting (a ``Limits`` field,
    ``method``/``methods``, or the ``DecodeConfig`` field of a server knob)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# (lowest, highest) of every limit: a server must not be started with a value that breaks it
# (e.g. ``batch_wait_ms=inf`` would kill the worker's wait, 1e12 would hold a lone request forever).
BOUNDS: dict[str, tuple[float, float]] = {
    "max_body_bytes": (1, 1 << 30),
    "max_prompt_tokens": (1, MAX_GEN_LENGTH),
    "max_tokens": (1, MAX_GEN_LENGTH),
    "default_max_tokens": (1, MAX_GEN_LENGTH),
    "max_n": (1, 1024),
    "max_prompts": (1, 1024),
    "max_stop": (0, 64),
    "max_stop_chars": (1, 4096),
    "max_batch_size": (1, 1024),
    "max_rows_in_flight": (1, 4096),
    "max_step_tokens": (-1, 1 << 24),
    "max_kv_tokens": (1, 1 << 31),
    "max_queue": (0, 100_000),
    "batch_wait_ms": (0, 10_000),
    "body_timeout_s": (0.1, 3600),
    "max_block_length": (1, MAX_GEN_LENGTH),
    "max_window": (0, MAX_GEN_LENGTH),
    "max_temperature": (0, 100),
}


AUTO_STEP_TOKENS = 512
"""``max_step_tokens`` on a CPU when none is given: a CPU forward costs about the same per token
from a few hundred tokens up, so a step of 512 loses little throughput and its short steps keep
the most urgent requests moving (measured in BENCHMARKS.md, "A token budget per step, most urgent
first"). On a GPU extra rows are nearly free, so the default there is no bound."""


def step_tokens(limit: int, device: str) -> int | None:
    """The scheduler's step budget for the ``max_step_tokens`` limit on ``device`` (None: none)."""
    if limit < 0:
        return AUTO_STEP_TOKENS if device == "cpu" else None
    return limit or None


@dataclass
class Limits:
    """Bounds enforced on every request; a request outside them is rejected, never clipped.

    ``default_max_tokens`` (None = min(128, max_tokens)) applies to requests that give none.
    ``max_batch_size`` bounds one request's rows (prompts x n) and, in same-settings batching, a
    batch's rows. In continuous batching ``max_rows_in_flight`` rows and ``max_kv_tokens``
    K/V positions (rows x (prompt + generation) of every running request) bound what decodes
    at once; a lone request is always admitted. ``max_step_tokens`` bounds the tokens one engine
    step feeds: the most urgent requests go first (``Handle.slack``), the others wait for the next
    step (0: no bound;
    -1, the default: ``AUTO_STEP_TOKENS`` on a CPU, no bound on an accelerator).
    ``max_queue`` requests may wait; one more is
    answered 429 at once. ``body_timeout_s`` is
    the longest a client may pause while sending its body (408 beyond). Each limit has the
    range ``BOUNDS`` gives.
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
    max_rows_in_flight: int = 64
    max_step_tokens: int = -1
    max_kv_tokens: int = 1 << 17
    max_queue: int = 64
    batch_wait_ms: float = 5.0
    body_timeout_s: float = 30.0
    max_block_length: int = 256
    max_window: int = 4096
    max_temperature: float = 2.0
    methods: tuple[str, ...] = tuple(PRESETS)

    def __post_init__(self) -> None:
        if self.default_max_tokens is None and isinstance(self.max_tokens, int):
            self.default_max_tokens = min(128, self.max_tokens)

    def validate(self) -> None:
        """Raise one ``SettingsError`` for the first limit out of its range."""
        for f in fields(self):
            if f.name not in BOUNDS:
                continue
            lo, hi = BOUNDS[f.name]
            value = getattr(self, f.name)
            integral = f.type.startswith("int") if isinstance(f.type, str) else f.type is int
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    integral and not isinstance(value, int)):
                kind = "an integer" if integral else "a number"
                raise SettingsError(f.name, f"must be {kind}, got {value!r}")
            if not (math.isfinite(value) and lo <= value <= hi):
                raise SettingsError(f.name, f"must be in [{_num(lo)}, {_num(hi)}], got {value!r}")
        if self.default_max_tokens > self.max_tokens:
            raise SettingsError("default_max_tokens", f"must be in [1, max_tokens={self.max_tokens}], "
                                f"got {self.default_max_tokens}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass
class ServerSettings:
    """What the app serves and how.

    ``method_overrides`` are knobs set for the default method only (e.g. ``--window``);
    ``shared_overrides`` apply to every method a request may pick (e.g. ``--block-length``).
    ``base`` (``--preset-file``) replaces the default method's preset, e.g. a config ``tune`` chose.
    ``batching`` picks the worker (``BATCHING``); ``batch_policy`` is the continuous engine's
    grouping of long (block start) and short (in-block) forwards (``engine.scheduler``).
    """

    model_name: str = "builtin"
    method: str = "streaming"
    shared_overrides: dict = field(default_factory=dict)
    method_overrides: dict = field(default_factory=dict)
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    base: DecodeConfig | None = None
    batching: str = "continuous"
    batch_policy: str = "split"

    def decode_config(self, method: str | None = None, knobs: dict | None = None,
                      max_tokens: int = 1) -> DecodeConfig:
        """The config of a request: the preset ``method`` (the server's default when None), the
        server's ``--block-length`` (every method), the server's own knobs (its default method
        only), the request's ``knobs``, and ``gen_length`` = ``max_tokens`` rounded up to whole
        blocks. Raises ``ConfigError`` naming the ``DecodeConfig`` field that breaks a rule."""
        method = method or self.method
        merged = {**self.shared_overrides, **(self.method_overrides if method == self.method else {}),
                  **(knobs or {})}
        own_base = self.base is not None and method == self.method
        preset_block = PRESETS.get(method, {}).get("block_length", DecodeConfig.block_length)
        block = merged.get("block_length", self.base.block_length if own_base else preset_block)
        if isinstance(block, int) and not isinstance(block, bool) and block > 0:
            merged["gen_length"] = gen_length_for(max_tokens, block)
        if own_base:
            return self.base.replace(**merged)
        return DecodeConfig.preset(method, **merged)

    def base_config(self, method: str | None = None) -> DecodeConfig:
        """The server's config for ``method`` (its default when None), ``gen_length`` one block."""
        return self.decode_config(method)

    def validate(self) -> None:
        """Fail at start-up, not on the first request, when the defaults break a rule."""
        if self.batching not in BATCHING:
            raise SettingsError("batching", f"must be one of {list(BATCHING)}, got {self.batching!r}")
        if self.batch_policy not in POLICIES:
            raise SettingsError("batch_policy", f"must be one of {list(POLICIES)}, got {self.batch_policy!r}")
        if self.method not in PRESETS:
            raise SettingsError("method", f"unknown method {self.method!r}; choose one of {sorted(PRESETS)}")
        unknown = set(self.limits.methods) - set(PRESETS)
        if unknown:
            raise SettingsError("methods", f"unknown method(s) {sorted(unknown)}")
        if self.method not in self.limits.methods:
            raise SettingsError("methods",
                                f"the default method {self.method!r} is not among the allowed methods")
        self.limits.validate()
        for method in self.limits.methods:
            self.base_config(method)
