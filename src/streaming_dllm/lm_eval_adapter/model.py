"""The ``streaming-dllm`` model of lm-evaluation-harness: a thin adapter over ``sd.generate``.

It translates harness requests into engine calls and back: ``generate_until`` batches prompts
with the same generation settings into one ``generate`` call, cuts each answer at the end of
generation (EOS / end-of-turn), at ``max_gen_toks`` tokens and at the ``until`` strings;
``loglikelihood`` is LLaDA's Monte-Carlo masked estimate (see ``loglikelihood.py``). Decoding
settings are a method preset (``method=``), optionally the paper's per-task settings
(``preset=llada-1.5/gsm8k/512``), or a saved config (``preset_file=preset.json``, as ``tune``
writes), and any ``DecodeConfig`` field given as a model arg.

Data parallel runs (``accelerate launch`` / ``torchrun``) are detected from ``WORLD_SIZE``: each
process loads the model on its own device, the harness hands each rank its share of requests,
and the collectives below let it gather the results.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import lm_eval.models  # noqa: F401  (registers the built-in models first; they stay resolvable)
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from ..cli.options import in_trained_blocks
from ..config import FIELDS, PRESETS, ConfigError, DecodeConfig
from ..engine import generate
from ..engine.scheduler import Scheduler
from ..loading import load_model, load_tokenizer
from ..text import answer_ids, stop_ids
from .loglikelihood import mc_loglikelihood
from .paper_presets import paper_preset

log = logging.getLogger(__name__)

_DECODE_FIELDS = set(FIELDS)
_IGNORED_GEN_KWARGS = {"do_sample", "temperature", "until", "max_gen_toks"}


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name}={value!r}: expected true or false")


def build_decode_config(
    method: str | None = None, preset: str | None = None, preset_file: str | None = None, **overrides: Any
) -> DecodeConfig:
    """``method`` preset (default ``streaming``) + paper ``preset`` + explicit field overrides; or a
    saved config (``preset_file=``, e.g. ``tune``'s preset.json) + explicit field overrides."""
    unknown = set(overrides) - _DECODE_FIELDS
    if unknown:
        raise ValueError(
            f"unknown model arg(s) {sorted(unknown)}; decoding fields are {sorted(_DECODE_FIELDS)}, "
            "other args: pretrained, method, preset, device, dtype, batch_size, mc_num, mc_batch_size, "
            "check_greedy, seed, show_speed, add_bos_token, revision, trust_remote_code"
        )
    if preset_file is not None:
        return _from_file(preset_file, method, preset, overrides)
    name = method or "streaming"
    if name not in PRESETS:
        raise ValueError(f"method={name!r}: unknown method; choose one of {sorted(PRESETS)}")
    fields = paper_preset(preset) if preset else {}
    if "early_exit" in overrides:
        overrides["early_exit"] = _as_bool("early_exit", overrides["early_exit"])
    fields.update(overrides)
    return DecodeConfig.preset(name, **fields)


def _from_file(path: str, method: str | None, preset: str | None, overrides: dict[str, Any]) -> DecodeConfig:
    """The file's config with the explicit overrides; it replaces ``method`` and ``preset``."""
    from ..preset_files import load_config

    if method is not None or preset is not None:
        raise ValueError("preset_file= replaces method= and preset=: give one of them")
    if "early_exit" in overrides:
        overrides["early_exit"] = _as_bool("early_exit", overrides["early_exit"])
    try:
        return load_config(path).replace(**overrides)
    except ConfigError as exc:
        raise ValueError(f"preset_file={path}: {exc}") from None


def _resolve_distributed(device: str | None) -> tuple[int, int, str | None]:
    """(rank, world_size, device) from the launcher's environment; initialises torch.distributed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    from ..parallel.group import join_process_group

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:
        device = "cpu"
    join_process_group("cuda" if device.startswith("cuda") else "cpu")
    return dist.get_rank(), dist.get_world_size(), device


class _Collectives:
    """The part of ``accelerate.Accelerator`` that the harness's evaluator calls in a data-parallel run.

    lm-eval 0.4.5 to 0.4.11 gathers per-rank request counts with ``lm.accelerator.gather`` and
    synchronises with ``lm.accelerator.wait_for_everyone()``; 0.4.12 and later call the model's
    ``all_gather`` / ``barrier``. Both lead to the same ``torch.distributed`` collectives.
    """

    def __init__(self, lm: StreamingDLLMEval) -> None:
        self._lm = lm

    @property
    def process_index(self) -> int:
        return self._lm._rank

    @property
    def num_processes(self) -> int:
        return self._lm._world_size

    @property
    def is_main_process(self) -> bool:
        return self._lm._rank == 0

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._lm.all_gather(tensor)

    def wait_for_everyone(self) -> None:
        self._lm.barrier()


@register_model("streaming-dllm")
class StreamingDLLMEval(LM):
    """lm-evaluation-harness model for masked diffusion LMs decoded by streaming-dllm."""

    def __init__(
        self,
        pretrained: str = "builtin",
        method: str | None = None,
        preset: str | None = None,
        preset_file: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        mc_num: int = 128,
        mc_batch_size: int = 32,
        check_greedy: bool = False,
        seed: int = 1234,
        show_speed: bool = True,
        add_bos_token: bool = False,
        revision: str | None = None,
        trust_remote_code: bool = False,
        **decode_overrides: Any,
    ) -> None:
        super().__init__()
        self.decode_config = build_decode_config(method, preset, preset_file, **decode_overrides)
        # gen_length given explicitly (or by a paper preset) is the canvas of every request;
        # otherwise each request's max_gen_toks, rounded up to whole blocks, sets it.
        self.fixed_gen_length = "gen_length" in decode_overrides or bool(preset) or bool(preset_file)
        self._rank, self._world_size, device = _resolve_distributed(device)
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            log.warning("device=%s requested but CUDA is not available; using cpu", device)
            device = "cpu"
        self.model = load_model(pretrained, device=device or "auto", dtype=dtype, revision=revision)
        self.tokenizer = load_tokenizer(
            self.model, trust_remote_code=_as_bool("trust_remote_code", trust_remote_code)
        )
        self._device = self.model.device
        if "block_length" not in decode_overrides and not preset and not preset_file:
            # A block-diffusion checkpoint decodes in the block size it was trained with.
            self.decode_config = in_trained_blocks(self.decode_config, self.model)
        self.pretrained = str(pretrained)
        self.batch_size = self._parse_batch_size(batch_size, max_batch_size)
        self.mc_num, self.mc_batch_size = int(mc_num), int(mc_batch_size)
        if self.mc_num < 1 or self.mc_batch_size < 1:
            raise ValueError(f"mc_num={mc_num}, mc_batch_size={mc_batch_size}: both must be >= 1")
        self.check_greedy = _as_bool("check_greedy", check_greedy)
        self.show_speed = _as_bool("show_speed", show_speed)
        self.add_bos_token = _as_bool("add_bos_token", add_bos_token)
        self.seed = int(seed)
        self._chat_templated = False
        self.stop_ids = stop_ids(self.model, self.tokenizer)
        self.speed: dict[str, float] = {}
        self._warned: set[str] = set()

    # ----------------------------------------------------------------- harness plumbing
    @staticmethod
    def _parse_batch_size(batch_size: int | str, max_batch_size: int | None) -> int:
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            # No memory probing: rows decode independently, so a fixed default is safe.
            return int(max_batch_size or 16)
        bs = int(batch_size)
        if bs < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        return bs

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", self.pretrained)).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        self._chat_templated = True
        return self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    @property
    def device(self) -> torch.device:
        # lm-eval >= 0.4.12 defines this on LM; earlier evaluators read it in a data-parallel run too.
        return self._device

    @property
    def accelerator(self) -> _Collectives:
        """What lm-eval < 0.4.12 calls for its collectives (``gather``, ``wait_for_everyone``)."""
        return _Collectives(self)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._world_size == 1:
            return tensor
        import torch.distributed as dist

        parts = [torch.zeros_like(tensor) for _ in range(self._world_size)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        if self._world_size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self._world_size if self._rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        if self._world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids of ``text``; a chat-templated prompt already holds its special tokens."""
        if add_special_tokens is None:
            add_special_tokens = not self._chat_templated
        ids = self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if self.add_bos_token and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def get_model_info(self) -> dict[str, Any]:
        cfg = self.decode_config.to_dict()
        return {
            "streaming_dllm": {
                "pretrained": self.pretrained,
                "decode_config": cfg,
                "fixed_gen_length": self.fixed_gen_length,
                "speed": dict(self.speed),
            }
        }

    # ----------------------------------------------------------------- generation
    def _request_config(self, gen_kwargs: dict[str, Any]) -> tuple[DecodeConfig, int | None]:
        """The DecodeConfig of one request and its max_gen_toks (None = no cap)."""
        changes: dict[str, Any] = {}
        max_toks = gen_kwargs.get("max_gen_toks")
        max_toks = int(max_toks) if max_toks is not None else None
        cfg = self.decode_config
        if max_toks is not None and not self.fixed_gen_length:
            cfg = cfg.for_budget(max_toks)
        if "temperature" in gen_kwargs or "do_sample" in gen_kwargs:
            sample = gen_kwargs.get("do_sample", True)
            temp = float(gen_kwargs.get("temperature", self.decode_config.temperature or 1.0))
            changes["temperature"] = temp if sample else 0.0
        for key in set(gen_kwargs) - _IGNORED_GEN_KWARGS:
            if key not in self._warned:
                self._warned.add(key)
                log.warning("streaming-dllm: generation kwarg %r is not supported and is ignored", key)
        return (cfg.replace(**changes) if changes else cfg), max_toks

    def _finish(self, ids: list[int], max_toks: int | None, until: list[str]) -> tuple[str, int]:
        """Answer text and its token count: cut at the end of generation, max_gen_toks, until."""
        ids = answer_ids(ids if max_toks is None else ids[:max_toks], self.stop_ids)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in until:
            if stop:
                text = text.split(stop, 1)[0]
        return text, len(ids)

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        from tqdm import tqdm

        results: list[str | None] = [None] * len(requests)
        prepared = []
        for req in requests:
            context, gen_kwargs = req.args[0], dict(req.args[1] or {})
            cfg, max_toks = self._request_config(gen_kwargs)
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            prepared.append((self.tok_encode(context), cfg, max_toks, until))

        totals = {"samples": 0, "tokens": 0, "seconds": 0.0, "nfe": 0, "row_nfe": 0, "tokens_fed": 0}
        bar = tqdm(
            total=len(requests), disable=disable_tqdm or self._rank != 0, desc="streaming-dllm generate"
        )
        # Continuous batching: up to batch_size requests decode together whatever their settings;
        # each answer equals the request decoded alone.
        sched = Scheduler(self.model, max_rows=self.batch_size, max_queue=max(len(requests), 1))
        order = sorted(range(len(requests)), key=lambda i: -len(prepared[i][0]))
        owner = {sched.submit([prepared[i][0]], prepared[i][1]).id: i for i in order}
        t0 = time.perf_counter()
        while sched.busy():
            for ev in sched.step():
                if ev.kind == "failed":
                    raise ev.error
                if ev.kind != "done":
                    continue
                i, out = owner[ev.handle.id], ev.output
                _, _, max_toks, until = prepared[i]
                text, n_tok = self._finish(out.generated(0), max_toks, until)
                results[i] = text
                totals["tokens"] += n_tok
                totals["samples"] += 1
                totals["row_nfe"] += out.nfe
                totals["tokens_fed"] += sum(out.tokens_fed)
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(1)
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        totals["seconds"] = time.perf_counter() - t0
        totals["nfe"] = sched.forwards
        bar.close()
        self._report(totals)
        return [r if r is not None else "" for r in results]

    def _report(self, t: dict[str, float]) -> None:
        """Throughput as the paper counts it (generated non-EOS tokens per second) and nfe."""
        if not t["samples"]:
            return
        sec = max(t["seconds"], 1e-9)
        self.speed = {
            "samples": t["samples"],
            "generated_tokens": t["tokens"],
            "seconds": round(t["seconds"], 4),
            "tokens_per_second": round(t["tokens"] / sec, 3),
            "seconds_per_sample": round(t["seconds"] / t["samples"], 4),
            "nfe": t["nfe"],
            "nfe_per_sample": round(t["row_nfe"] / t["samples"], 3),
            "tokens_fed": t["tokens_fed"],
        }
        if self.show_speed:
            s = self.speed
            print(
                f"[streaming-dllm rank {self._rank}/{self._world_size}] {s['samples']} samples, "
                f"{s['generated_tokens']} tokens in {s['seconds']:.2f}s = "
                f"{s['tokens_per_second']:.1f} tokens/s; "
                f"nfe {s['nfe']} (batched forwards), {s['nfe_per_sample']:.1f} per sample; "
                f"tokens fed {s['tokens_fed']}",
                flush=True,
            )

    # ----------------------------------------------------------------- likelihood
    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context) if context else []
        if not ctx:  # empty context: condition on one BOS (or EOS) token
            start = self.tokenizer.bos_token_id
            ctx = [start if start is not None else self.model.eos_id]
            return ctx, self.tok_encode(continuation, add_special_tokens=False)
        return ctx, whole[len(ctx) :]

    def _is_greedy(self, prefix: list[int], target: list[int]) -> bool:
        """Whether one-token-per-step low-confidence decoding of the masked target reproduces it."""
        n = len(target)
        cfg = DecodeConfig.preset("vanilla", gen_length=n, block_length=n, steps=n)
        return generate(self.model, [prefix], cfg).generated(0) == target

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from tqdm import tqdm

        out: list[tuple[float, bool]] = []
        for req in tqdm(
            requests, disable=disable_tqdm or self._rank != 0, desc="streaming-dllm loglikelihood"
        ):
            context, continuation = req.args[0], req.args[1]
            prefix, target = self._encode_pair(context, continuation)
            if not target:
                raise ValueError(f"loglikelihood: continuation {continuation!r} encodes to no tokens")
            ll = mc_loglikelihood(
                self.model,
                prefix,
                target,
                n_samples=self.mc_num,
                batch_size=self.mc_batch_size,
                mask_id=self.decode_config.mask_id,
                seed=self.seed,
            )
            greedy = self._is_greedy(prefix, target) if self.check_greedy else False
            out.append((ll, greedy))
            self.cache_hook.add_partial("loglikelihood", req.args, (ll, greedy))
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "streaming-dllm: loglikelihood_rolling (perplexity tasks) needs a left-to-right factorisation, "
            "which masked diffusion LMs do not have; use generate_until or multiple-choice tasks"
        )
