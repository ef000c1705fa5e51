"""Markdown tables for stdout / BENCHMARKS.md and the JSON record (raw samples, configs, machine)."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import subprocess
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .metrics import find_reference, paired_accuracy_delta, paired_speedup, paired_time_speedup, summarize
from .results import Group, MethodResult

SCHEMA = "streaming-dllm-bench/1"
PACKAGES = ("streaming-dllm", "torch", "transformers", "tokenizers", "safetensors", "numpy", "matplotlib")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["git_commit"], out["git_dirty"] = _git()
    return out


def _git() -> tuple[str | None, bool | None]:
    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip() != ""
        return commit or None, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def method_record(res: MethodResult, everything: list[MethodResult]) -> dict[str, Any]:
    """One method's JSON: config, sample-size notes, summary, speedups, raw samples."""
    cfg = res.method.config
    vanilla = find_reference(everything, "vanilla", cfg)
    fast = find_reference(everything, "fast-dllm", cfg)
    return {
        "label": res.method.label,
        "preset": cfg.preset_name,
        "params": res.method.params,
        "config": cfg.to_dict(),
        "n_planned": res.n_planned,
        "note": res.method.note,
        "stopped": res.stopped,
        "reused_from": res.reused_from,
        "summary": summarize(res.samples),
        "accuracy_delta_vs_vanilla": paired_accuracy_delta(res, vanilla),
        "speedup_vs_vanilla": paired_speedup(res, vanilla),
        "speedup_vs_fast_dllm": paired_speedup(res, fast),
        "time_speedup_vs_vanilla": paired_time_speedup(res, vanilla),
        "time_speedup_vs_fast_dllm": paired_time_speedup(res, fast),
        "peak_mem_mib": None if res.peak_bytes is None else res.peak_bytes / 2**20,
        "samples": [asdict(s) for s in res.samples],
    }


def group_records(groups: list[Group], results: list[list[MethodResult]]) -> list[dict[str, Any]]:
    everything = [r for rs in results for r in rs]
    return [
        {"suite": g.suite, "name": g.name, "gen_length": g.gen_length,
         "methods": [method_record(r, everything) for r in rs]}
        for g, rs in zip(groups, results, strict=True)
    ]


def _fmt(x: float | None, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def _speedup(m: dict[str, Any], ref: str) -> str:
    """Throughput ratio; where the reference generated no tokens, the wall-time ratio marked t."""
    thr, t = m[f"speedup_vs_{ref}"], m[f"time_speedup_vs_{ref}"]
    if thr is not None and not (isinstance(thr, float) and math.isnan(thr)):
        return f"{thr:.2f}x"
    return f"t {t:.2f}x" if t is not None else "–"


def _delta(m: dict[str, Any]) -> str:
    """Paired accuracy difference to vanilla in points, with its 95% interval."""
    d = m["accuracy_delta_vs_vanilla"]
    if d is None or m["preset"] == "vanilla":
        return "–"
    lo, hi = d["ci95"]
    return f"{100 * d['delta']:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})"


def sample_note(m: dict[str, Any], full_n: int) -> str:
    """Why a method has fewer samples than the others (empty when it has them all)."""
    n = m["summary"]["n"]
    if m["stopped"] == "time budget":
        return f"n={n}: stopped by the time budget"
    if n < full_n:
        return f"n={n}: smaller sample ({m['note'] or 'fewer prompts'})"
    return ""


def markdown_group(group: dict[str, Any], full_n: int) -> str:
    """One table: the group's methods with every figure; notes below for smaller samples."""
    head = ("| method | n | accuracy | vs vanilla, points (95% CI) | tokens/s | speedup vs vanilla | "
            "speedup vs fast-dllm | latency median (s) | latency p90 (s) | nfe | tokens fed | "
            "peak mem (MiB) |")
    lines = [f"### {group['suite']}: {group['name']}", "", head, "|" + "---|" * 12]
    notes = []
    for m in group["methods"]:
        s = m["summary"]
        mark = ""
        note = sample_note(m, full_n)
        if note:
            notes.append(f"{m['label']}: {note}")
            mark = "*"
        lines.append(
            f"| {m['label']}{mark} | {s['n']} | {_fmt(100 * s['accuracy'], '.1f')}% | {_delta(m)} | "
            f"{_fmt(s['throughput_tok_s'], '.1f')} | {_speedup(m, 'vanilla')} | "
            f"{_speedup(m, 'fast_dllm')} | {_fmt(s['latency_median_s'], '.3f')} | "
            f"{_fmt(s['latency_p90_s'], '.3f')} | {_fmt(s['nfe_mean'], '.1f')} | "
            f"{_fmt(s['tokens_fed_mean'], '.0f')} | {_fmt(m['peak_mem_mib'], '.1f')} |"
        )
    lines.append("")
    if any(_speedup(m, r).startswith("t ") for m in group["methods"] for r in ("vanilla", "fast_dllm")):
        lines += ["t: the reference generated no non-EOS tokens on these prompts (throughput 0), so the "
                  "speedup shown is the ratio of wall time per sample.", ""]
    if notes:
        lines += ["\\* " + "; ".join(notes) + ". Speedups are paired: computed on the prompts both "
                  "methods decoded.", ""]
    return "\n".join(lines)


def markdown(record: dict[str, Any]) -> str:
    """Every table of a run, with the command, machine and memory method in a header."""
    mach, st = record["machine"], record["settings"]
    out = [
        f"Command: `{' '.join(record['command'])}`",
        f"Machine: {mach['cpu']}, {mach['cpu_count']} CPUs, torch threads {mach['torch_threads']}, "
        f"device {mach['device']}{', ' + mach['gpu'] if mach.get('gpu') else ''}; "
        f"batch size {st['batch_size']}; model {record['model']['name']}",
        f"Throughput = generated non-EOS tokens / s. Peak memory: {record['memory_method']}.",
        "",
    ]
    out += [markdown_group(g, st["n"]) for g in record["groups"]]
    return "\n".join(out)


def build_record(*, command: list[str], settings: dict[str, Any], model_info: dict[str, Any],
                 device: torch.device, memory_method: str, groups: list[dict[str, Any]],
                 seconds: float, code_versions: dict[str, str | None]) -> dict[str, Any]:
    """The JSON record; ``code_versions`` is ``versions()`` taken when the run started, so it names
    the commit that ran even if the working tree changes during a long run."""
    return {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "settings": settings,
        "model": model_info,
        "machine": machine(device),
        "versions": code_versions,
        "memory_method": memory_method,
        "groups": groups,
        "plots": [],
        "seconds": seconds,
    }


def command_line(args: Any, options: list[tuple[str, str]]) -> list[str]:
    """The run as one explicit ``streaming-dllm bench`` command: every option with its value.

    ``options`` pairs each flag with its ``args`` attribute; flags left at None/False are omitted.
    """
    cmd = ["streaming-dllm", "bench"]
    for flag, dest in options:
        value = getattr(args, dest, None)
        if value is None or value is False:
            continue
        if value is True:
            cmd.append(flag)
        elif isinstance(value, list):
            cmd += [flag, *map(str, value)]
        else:
            cmd += [flag, str(value)]
    return cmd


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def doc_section(record: dict[str, Any], plots_rel: str) -> str:
    """The generated part of BENCHMARKS.md: when, what ran where, tables, then the plots."""
    v, mach = record["versions"], record["machine"]
    lines = [
        BEGIN,
        f"_Generated by `streaming-dllm bench` on {record['created']} in {record['seconds'] / 60:.1f} min "
        f"(git {(v.get('git_commit') or 'unknown')[:10]}{' + local changes' if v.get('git_dirty') else ''}; "
        f"torch {v['torch']}, python {v['python']}; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in mach.get('load_avg') or [])}, at the start "
        f"{', '.join(f'{x:.1f}' for x in mach.get('load_avg_start') or [])})._",
        "",
        markdown(record),
    ]
    prefix = "" if plots_rel in ("", ".") else plots_rel.rstrip("/") + "/"
    for name in record["plots"]:
        lines += [f"![{name}]({prefix}{name})", ""]
    lines.append(END)
    return "\n".join(lines)


def update_doc(path: Path, record: dict[str, Any], plots_dir: Path) -> None:
    """Replace the generated section of ``path`` (between the markers; appended if absent)."""
    text = path.read_text() if path.exists() else ""
    rel = os.path.relpath(plots_dir.resolve(), path.resolve().parent)
    section = doc_section(record, Path(rel).as_posix())
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + section + "\n"
    path.write_text(text)
