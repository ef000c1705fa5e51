"""Translate a validated request body into what the engine needs, checking every server bound.

Nothing here decodes: the result is a ``Plan`` (prompt ids, one ``DecodeConfig``, seeds, stop
strings, the output cut) that the batcher hands to the engine.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from ..config import ConfigError, DecodeConfig
from ..text import encode_chat
from .errors import APIError, bad
from .schemas import ChatCompletionRequest, CompletionRequest
from .settings import ServerSettings

SEED_MOD = 2**63
KNOBS = {"block_length": int, "threshold": float, "alpha": float, "window": int}
"""Request fields that set a ``DecodeConfig`` field of the same name (``method`` picks the preset)."""
UNION_TYPES = {
    "prompt": "a string, a list of strings, a list of token ids or a list of token-id lists",
    "content": "a string or a list of {'type': 'text', 'text': ...} parts",
    "stop": "a string or a list of strings",
    "tool_choice": "a string or an object",
}


@dataclass
class Plan:
    """One request, ready to decode: ``rows`` are prompts repeated ``n`` times (choice order)."""

    prompts: list[list[int]]
    n: int
    cfg: DecodeConfig
    max_tokens: int
    stops: list[str]
    seeds: list[int]
    include_usage: bool = False
    rows: list[list[int]] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = [p for p in self.prompts for _ in range(self.n)]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


def parse_body(raw: bytes, schema: type[BaseModel]) -> BaseModel:
    """Parse JSON strictly; malformed JSON is a 400, a wrong field type or a missing field a 422."""
    try:
        return schema.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        err = errors[0]
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "json_invalid":
            msg = f"request body is not valid JSON ({err['msg']})"
            raise APIError(400, msg, code="invalid_json") from None
        if not loc:
            raise APIError(400, "request body must be a JSON object", code="invalid_json") from None
        if err["type"] == "missing":
            raise APIError(422, f"{loc}: this field is required", param=loc, code="missing_field") from None
        if err["type"] == "extra_forbidden":
            raise APIError(422, f"{loc}: unknown field", param=loc, code="unknown_field") from None
        prefix = _union_field(errors)
        if prefix:
            loc = ".".join(str(p) for p in prefix)
            expected = UNION_TYPES.get(str(prefix[-1]), "one of the accepted types")
            raise APIError(422, f"{loc}: must be {expected}", param=loc, code="invalid_type") from None
        raise APIError(422, f"{loc}: {err['msg']}", param=loc, code="invalid_type") from None


def _union_field(errors: list[dict]) -> tuple:
    """The path of a union-typed field when the errors are its members' (pydantic tags each
    member's errors with the member's type, e.g. ``prompt.list[int].0``); else ``()``."""
    locs = [e["loc"] for e in errors if e["loc"][:1] == errors[0]["loc"][:1]]
    if len(locs) < 2:
        return ()
    prefix: list = []
    for parts in zip(*locs, strict=False):
        if any(p != parts[0] for p in parts):
            break
        prefix.append(parts[0])
    tags = {loc[len(prefix)] for loc in locs if len(loc) > len(prefix)}
    is_tag = [isinstance(t, str) and ("[" in t or t in ("str", "int", "float", "bool") or t[:1].isupper())
              for t in tags]
    return tuple(prefix) if tags and all(is_tag) else ()


class Translator:
    """Validates requests against the server's limits and the tokenizer, and builds plans."""

    def __init__(self, settings: ServerSettings, tokenizer, vocab_size: int,
                 max_context: int | None = None) -> None:
        self.settings, self.lim, self.tok, self.vocab = settings, settings.limits, tokenizer, vocab_size
        self.max_context = max_context

    def completion(self, req: CompletionRequest) -> Plan:
        self._check_model(req.model)
        self._refuse(req, echo=False, logprobs=None, suffix=None)
        if req.best_of not in (None, req.n):
            raise bad("best_of", "is not supported (only best_of == n)", "unsupported_parameter")
        prompt = req.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        if not prompt:
            raise bad("prompt", "must not be empty")
        if len(prompt) > self.lim.max_prompts:
            raise bad("prompt", f"at most {self.lim.max_prompts} prompts per request, got {len(prompt)}")
        ids = [self._encode(p) for p in prompt]
        return self._plan(req, ids, req.max_tokens, "max_tokens")

    def chat(self, req: ChatCompletionRequest) -> Plan:
        self._check_model(req.model)
        self._refuse(req, logprobs=False, top_logprobs=None, tools=None, tool_choice=None)
        if req.response_format not in (None, {"type": "text"}):
            raise bad("response_format", "only {'type': 'text'} is supported", "unsupported_parameter")
        if not req.messages:
            raise bad("messages", "must contain at least one message")
        if getattr(self.tok, "chat_template", None) is None:
            raise bad("messages", "this model has no chat template; use /v1/completions", "no_chat_template")
        messages = []
        for i, m in enumerate(req.messages):
            text = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
            role = "system" if m.role == "developer" else m.role
            if role != "assistant" and not text.strip():
                raise bad(f"messages.{i}.content", "must not be empty")
            messages.append({"role": role, "content": text})
        if sum(len(m["content"]) for m in messages) > self.lim.max_prompt_tokens * 32:
            raise bad("messages", f"is too long (more than {self.lim.max_prompt_tokens} tokens)",
                      "context_length_exceeded")
        try:
            ids = encode_chat(self.tok, messages)
        except Exception as exc:  # a template may reject a role order, e.g. two system messages
            raise bad("messages", f"the chat template rejected these messages ({exc})") from None
        ids = self._check_ids(ids, "messages")
        if req.max_tokens is not None and req.max_completion_tokens is not None:
            raise bad("max_completion_tokens", "give max_tokens or max_completion_tokens, not both")
        if req.max_completion_tokens is not None:
            return self._plan(req, [ids], req.max_completion_tokens, "max_completion_tokens")
        return self._plan(req, [ids], req.max_tokens, "max_tokens")

    def _check_model(self, model: str) -> None:
        if model != self.settings.model_name:
            raise APIError(404, f"model: {model!r} does not exist; this server serves "
                           f"{self.settings.model_name!r}", param="model", code="model_not_found")

    @staticmethod
    def _refuse(req: BaseModel, **defaults: object) -> None:
        """Refuse, by name, a standard field this server does not implement when it is set."""
        for name, default in defaults.items():
            if getattr(req, name) != default:
                raise bad(name, "is not supported by this server", "unsupported_parameter")

    def _encode(self, prompt: str | list[int], param: str = "prompt") -> list[int]:
        if isinstance(prompt, str):
            if len(prompt) > self.lim.max_prompt_tokens * 32:
                raise bad(param, f"is too long (more than {self.lim.max_prompt_tokens} tokens)",
                          "context_length_exceeded")
            ids = self.tok(prompt, add_special_tokens=False)["input_ids"]
        else:
            ids = list(prompt)
            if any(t < 0 or t >= self.vocab for t in ids):
                raise bad(param, f"token ids must be in [0, {self.vocab})")
        return self._check_ids(ids, param)

    def _check_ids(self, ids: list[int], param: str) -> list[int]:
        if not ids:
            raise bad(param, "must not be empty")
        if len(ids) > self.lim.max_prompt_tokens:
            raise bad(param, f"has {len(ids)} tokens, more than the limit of {self.lim.max_prompt_tokens}",
                      "context_length_exceeded")
        return list(ids)

    def _plan(self, req: CompletionRequest | ChatCompletionRequest, prompts: list[list[int]],
              max_tokens: int | None, max_name: str) -> Plan:
        lim = self.lim
        if max_tokens is None:
            max_tokens = lim.default_max_tokens
        if not 1 <= max_tokens <= lim.max_tokens:
            raise bad(max_name, f"must be in [1, {lim.max_tokens}], got {max_tokens}")
        if not 1 <= req.n <= lim.max_n:
            raise bad("n", f"must be in [1, {lim.max_n}], got {req.n}")
        if len(prompts) * req.n > lim.max_batch_size:
            raise bad("n", f"prompts x n = {len(prompts) * req.n} choices, more than the limit of "
                      f"{lim.max_batch_size}")
        if req.top_p not in (None, 1, 1.0):
            raise bad("top_p", "only 1 is supported (diffusion decoding samples with temperature only)",
                      "unsupported_parameter")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(req, name) not in (None, 0, 0.0):
                raise bad(name, "only 0 is supported", "unsupported_parameter")
        if req.logit_bias:
            raise bad("logit_bias", "is not supported", "unsupported_parameter")
        stops = self._stops(req.stop)
        temperature = 0.0 if req.temperature is None else req.temperature
        if not 0.0 <= temperature <= lim.max_temperature:
            raise bad("temperature", f"must be in [0, {lim.max_temperature}], got {temperature}")
        cfg = self._config(req, max_tokens, temperature, max_name)
        longest = max(len(p) for p in prompts)
        if self.max_context is not None and longest + cfg.gen_length > self.max_context:
            raise bad("prompt" if isinstance(req, CompletionRequest) else "messages",
                      f"{longest} prompt tokens plus {cfg.gen_length} generated positions ({max_name} "
                      f"rounded up to whole blocks) exceed the model's context of {self.max_context} "
                      "positions",
                      "context_length_exceeded")
        base = req.seed if req.seed is not None else secrets.randbits(62)
        seeds = [(base + j) % SEED_MOD for _ in prompts for j in range(req.n)]
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        if req.stream_options is not None and not req.stream:
            raise bad("stream_options", "is only allowed with stream: true")
        return Plan(prompts, req.n, cfg, max_tokens, stops, seeds, include_usage)

    def _stops(self, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > self.lim.max_stop:
            raise bad("stop", f"at most {self.lim.max_stop} stop sequences, got {len(stops)}")
        for s in stops:
            if not s:
                raise bad("stop", "stop sequences must not be empty")
            if len(s) > self.lim.max_stop_chars:
                raise bad("stop", f"stop sequences must be at most {self.lim.max_stop_chars} characters")
        return stops

    def _config(self, req: CompletionRequest | ChatCompletionRequest, max_tokens: int,
                temperature: float, max_name: str) -> DecodeConfig:
        """Check the request's knobs against the server's own limits, then build its config in
        ``ServerSettings.decode_config``; a rule it breaks is reported under the request's field."""
        lim = self.lim
        method = req.method or self.settings.method
        if method not in lim.methods:
            raise bad("method", f"must be one of {list(lim.methods)}, got {method!r}")
        if req.block_length is not None and not 1 <= req.block_length <= lim.max_block_length:
            raise bad("block_length", f"must be in [1, {lim.max_block_length}], got {req.block_length}")
        if req.window is not None and not 0 <= req.window <= lim.max_window:
            raise bad("window", f"must be in [0, {lim.max_window}], got {req.window}")
        knobs: dict[str, object] = {"temperature": float(temperature)}
        for name, kind in KNOBS.items():
            if getattr(req, name) is not None:
                knobs[name] = kind(getattr(req, name))
        try:
            return self.settings.decode_config(method, knobs, max_tokens)
        except ConfigError as exc:
            name = max_name if exc.field == "gen_length" else exc.field
            raise bad(name, str(exc)) from None
