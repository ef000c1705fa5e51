"""GPU check of the built-in model: CUDA parity, bf16 agreement and ``bench`` throughput.

Run on a CUDA machine through ``OUT=/some/dir bash benchmarks/gpu_check.sh`` (which time-boxes
each stage); this script is one stage or several:

* ``parity``: every preset decodes the same arithmetic prompts on ``--device`` and on the CPU,
  both in float32; per preset, the rows whose tokens are identical, the nfe of each side and,
  for a row that differs, its first differing generated position. Also the max abs difference
  of one forward's logits, device against CPU.
* ``bf16``: the same prompts on ``--device`` in bfloat16 against float32: the share of identical
  rows and the accuracy (``arith.score`` of the answer text) of each dtype.
* ``bench``: ``streaming-dllm bench --suite main`` at batch 1 and at batch 8; tokens/s, accuracy,
  nfe and latency per method from each run's ``bench.json``.
* ``report``: prints the Markdown summary of ``gpu_check.json`` (every stage prints its own too).

Each stage updates ``OUT/gpu_check.json`` (``--out``, default ``$OUT``) as soon as it ends, and a
stage that fails is recorded there with its error; the others still run. A stage that starts
writes ``status: running`` first, so one killed from outside (the shell's ``timeout``) reads as
``running`` and the report calls it killed. ``--deadline-s`` bounds this process: presets not
started in time are recorded as skipped.

``--device cpu`` smoke-tests the script on a CPU: parity is then CPU against CPU (identical by
construction) and bf16 runs on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

SCHEMA = "streaming-dllm-gpu-check/1"
STAGES = ("parity", "bf16", "bench")
MAX_MISMATCHES = 10  # rows listed per preset; the count covers all


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


# ----------------------------------------------------------------------------- JSON on disk


def _json_path(out: Path) -> Path:
    return out / "gpu_check.json"


def load_results(out: Path) -> dict[str, Any]:
    path = _json_path(out)
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    return {"schema": SCHEMA, "stages": {}}


def save_stage(out: Path, name: str, record: dict[str, Any], env: dict[str, Any] | None = None) -> None:
    """Merge one stage's record into ``gpu_check.json`` (written whole, then renamed)."""
    data = load_results(out)
    data["schema"] = SCHEMA
    if env:
        data.setdefault("environment", {}).update(env)
    data.setdefault("stages", {})[name] = record
    path = _json_path(out)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


# ----------------------------------------------------------------------------- environment


def environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "requested_device": device,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        env["device_name"] = torch.cuda.get_device_name(index)
        env["device_capability"] = ".".join(map(str, torch.cuda.get_device_capability(index)))
    else:
        env["device_name"] = platform.processor() or "cpu"
    for pkg in ("transformers", "safetensors", "tokenizers"):
        try:
            env[pkg] = __import__(pkg).__version__
        except Exception as exc:  # noqa: BLE001 - a missing package is a finding, not a crash
            env[pkg] = f"unavailable ({type(exc).__name__})"
    try:
        env["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


# ----------------------------------------------------------------------------- decoding


class Decoder:
    """Loads each (device, dtype) model once and decodes each (device, dtype, preset) once."""

    def __init__(self, args: argparse.Namespace) -> None:
        import streaming_dllm as sd
        from streaming_dllm.tasks import arith
        from streaming_dllm.tasks.arith_eval import encode_prompts

        self.args = args
        self.models: dict[tuple[str, str], Any] = {}
        self.decodes: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.problems = arith.problems("test", args.n)
        self.tok = sd.load_tokenizer(self.model("cpu", "float32"))
        self.prompts = encode_prompts(self.tok, self.problems)

    def model(self, device: str, dtype: str):
        import streaming_dllm as sd

        key = (device, dtype)
        if key not in self.models:
            self.models[key] = sd.load_model("builtin", device=device, dtype=dtype)
        return self.models[key]

    def config(self, preset: str):
        import streaming_dllm as sd

        return sd.DecodeConfig.preset(
            preset, gen_length=self.args.gen_length, block_length=self.args.block_length
        )

    def decode(self, device: str, dtype: str, preset: str) -> dict[str, Any]:
        """Token rows, nfe and scores of every prompt, decoded ``--batch-size`` rows at a time."""
        key = (device, dtype, preset)
        if key in self.decodes:
            return self.decodes[key]
        import streaming_dllm as sd
        from streaming_dllm.tasks import arith
        from streaming_dllm.text import answer_ids, stop_ids

        model, cfg = self.model(device, dtype), self.config(preset)
        stops = stop_ids(model, self.tok)
        rows: list[list[int]] = []
        row_nfe: list[int] = []
        nfe = 0
        correct: list[bool] = []
        bs = self.args.batch_size or len(self.prompts)
        _sync(device)
        start = time.perf_counter()
        for i in range(0, len(self.prompts), bs):
            out = sd.generate(model, self.prompts[i : i + bs], cfg)
            nfe += out.nfe
            row_nfe.extend(out.row_nfe)
            for r in range(out.sequences.shape[0]):
                gen = out.generated(r)
                rows.append(gen)
                text = self.tok.decode(answer_ids(gen, stops), skip_special_tokens=True)
                correct.append(bool(arith.score(text, self.problems[i + r].answer)))
        _sync(device)
        seconds = time.perf_counter() - start
        result = {"rows": rows, "row_nfe": row_nfe, "nfe": nfe, "correct": correct, "seconds": seconds}
        self.decodes[key] = result
        return result

    def logits(self, device: str, dtype: str):
        """Float32 logits (on the CPU) of one forward: prompt 0 followed by gen_length masks."""
        import torch

        model = self.model(device, dtype)
        ids = self.prompts[0] + [model.token_ids().mask] * self.args.gen_length
        x = torch.tensor([ids], device=model.device)
        pos = torch.arange(len(ids), device=model.device)[None]
        with torch.inference_mode():
            return model(x, pos).float().cpu()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def compare_rows(a: list[list[int]], b: list[list[int]]) -> tuple[int, list[dict[str, Any]]]:
    """Rows identical in ``a`` and ``b``; for the others, the first differing generated position."""
    same, diffs = 0, []
    for r, (x, y) in enumerate(zip(a, b, strict=True)):
        if x == y:
            same += 1
            continue
        pos = next((i for i, (p, q) in enumerate(zip(x, y, strict=True)) if p != q), min(len(x), len(y)))
        diffs.append(
            {
                "row": r,
                "first_diff": pos,
                "a": x[pos] if pos < len(x) else None,
                "b": y[pos] if pos < len(y) else None,
            }
        )
    return same, diffs


def _logit_diff(a, b) -> dict[str, Any]:
    d = (a - b).abs()
    return {
        "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
        "max_abs_logit": float(b.abs().max()),
        "argmax_agree": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
        "positions": int(a.shape[1]),
    }


def _preset_loop(args, deadline: Deadline, body) -> dict[str, Any]:
    table: dict[str, Any] = {}
    slowest = 0.0  # a preset is not started unless the slowest one so far would still fit
    for preset in args.presets:
        if deadline.left() <= 1.2 * slowest:
            table[preset] = {
                "status": "skipped",
                "error": f"deadline: {max(0.0, deadline.left()):.0f} s left, "
                f"a preset took up to {slowest:.0f} s",
            }
            continue
        start = time.perf_counter()
        try:
            table[preset] = {"status": "ok", **body(preset)}
        except Exception as exc:  # noqa: BLE001 - a failed preset is recorded, the next one runs
            table[preset] = {
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-2000:],
            }
        table[preset]["seconds"] = round(time.perf_counter() - start, 3)
        slowest = max(slowest, table[preset]["seconds"])
    return table


def stage_parity(args, dec: Decoder, deadline: Deadline) -> dict[str, Any]:
    dev = args.device
    rec: dict[str, Any] = {
        "compare": f"{dev} float32 vs cpu float32",
        "n": len(dec.prompts),
        "gen_length": args.gen_length,
        "block_length": args.block_length,
    }
    try:
        rec["logits"] = _logit_diff(dec.logits(dev, "float32"), dec.logits("cpu", "float32"))
    except Exception as exc:  # noqa: BLE001
        rec["logits"] = {"error": f"{type(exc).__name__}: {exc}"}

    def body(preset: str) -> dict[str, Any]:
        ref = dec.decode("cpu", "float32", preset)
        # A second decode on the CPU must not be served from the cache: cpu vs cpu still runs twice.
        got = dec.decode(dev, "float32", preset) if dev != "cpu" else _fresh(dec, preset)
        same, diffs = compare_rows(got["rows"], ref["rows"])
        n = len(ref["rows"])
        return {
            "n": n,
            "identical_rows": same,
            "identical_share": same / max(1, n),
            "nfe_device": got["nfe"],
            "nfe_cpu": ref["nfe"],
            "nfe_equal": got["nfe"] == ref["nfe"],
            "row_nfe_equal": sum(p == q for p, q in zip(got["row_nfe"], ref["row_nfe"], strict=True)),
            "accuracy_device": sum(got["correct"]) / max(1, n),
            "accuracy_cpu": sum(ref["correct"]) / max(1, n),
            "seconds_device": round(got["seconds"], 3),
            "seconds_cpu": round(ref["seconds"], 3),
            "mismatches": len(diffs),
            "first_mismatches": [
                {"row": d["row"], "first_diff": d["first_diff"], "device_token": d["a"], "cpu_token": d["b"]}
                for d in diffs[:MAX_MISMATCHES]
            ],
        }

    rec["presets"] = _preset_loop(args, deadline, body)
    return rec


def _fresh(dec: Decoder, preset: str) -> dict[str, Any]:
    key = ("cpu", "float32", preset)
    kept = dec.decodes.pop(key)
    try:
        return dec.decode("cpu", "float32", preset)
    finally:
        dec.decodes[key] = kept


def stage_bf16(args, dec: Decoder, deadline: Deadline) -> dict[str, Any]:
    dev = args.device
    rec: dict[str, Any] = {
        "compare": f"{dev} bfloat16 vs {dev} float32",
        "n": len(dec.prompts),
        "gen_length": args.gen_length,
        "block_length": args.block_length,
    }
    try:
        rec["logits"] = _logit_diff(dec.logits(dev, "bfloat16"), dec.logits(dev, "float32"))
    except Exception as exc:  # noqa: BLE001
        rec["logits"] = {"error": f"{type(exc).__name__}: {exc}"}

    def body(preset: str) -> dict[str, Any]:
        f32 = dec.decode(dev, "float32", preset)
        b16 = dec.decode(dev, "bfloat16", preset)
        same, diffs = compare_rows(b16["rows"], f32["rows"])
        n = len(f32["rows"])
        return {
            "n": n,
            "identical_rows": same,
            "identical_share": same / max(1, n),
            "accuracy_float32": sum(f32["correct"]) / max(1, n),
            "accuracy_bfloat16": sum(b16["correct"]) / max(1, n),
            "answer_agree": sum(p == q for p, q in zip(f32["correct"], b16["correct"], strict=True)),
            "nfe_float32": f32["nfe"],
            "nfe_bfloat16": b16["nfe"],
            "seconds_float32": round(f32["seconds"], 3),
            "seconds_bfloat16": round(b16["seconds"], 3),
            "mismatches": len(diffs),
            "first_mismatches": [
                {"row": d["row"], "first_diff": d["first_diff"], "bf16_token": d["a"], "f32_token": d["b"]}
                for d in diffs[:MAX_MISMATCHES]
            ],
        }

    rec["presets"] = _preset_loop(args, deadline, body)
    return rec


# ----------------------------------------------------------------------------- bench


def bench_summary(bench_json: Path) -> dict[str, Any]:
    """Per table and method: the figures of ``bench.json`` a throughput check needs."""
    data = json.loads(bench_json.read_text())
    groups = []
    for g in data.get("groups", []):
        methods = []
        for m in g.get("methods", []):
            s = m.get("summary") or {}
            methods.append(
                {
                    "label": m.get("label"),
                    "n": s.get("n"),
                    "accuracy": s.get("accuracy"),
                    "tokens_per_s": s.get("throughput_tok_s"),
                    "latency_median_s": s.get("latency_median_s"),
                    "latency_p90_s": s.get("latency_p90_s"),
                    "nfe_mean": s.get("nfe_mean"),
                    "peak_mem_mib": m.get("peak_mem_mib"),
                    "speedup_vs_vanilla": m.get("speedup_vs_vanilla"),
                    "speedup_vs_fast_dllm": m.get("speedup_vs_fast_dllm"),
                    "reused_from": m.get("reused_from"),
                }
            )
        groups.append(
            {
                "suite": g.get("suite"),
                "name": g.get("name"),
                "gen_length": g.get("gen_length"),
                "methods": methods,
            }
        )
    model = data.get("model") or {}
    return {
        "batch_size": (data.get("settings") or {}).get("batch_size"),
        "dtype": model.get("dtype"),
        "device": model.get("device"),
        "seconds": data.get("seconds"),
        "groups": groups,
    }


def _env_with_src() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return env


def stage_bench(args, out: Path, deadline: Deadline) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    plan = [("bench_b1", 1), ("bench_b8", 8)]
    for i, (name, bs) in enumerate(plan):
        left = deadline.left() - 5
        if left < 20:
            runs[name] = {"status": "skipped", "error": f"deadline: {max(0, left):.0f} s left"}
            continue
        timeout = left / (len(plan) - i)  # the later run keeps its share
        cmd = [
            sys.executable,
            "-m",
            "streaming_dllm.cli",
            "bench",
            "--suite",
            "main",
            "--device",
            args.device,
            "--n",
            str(args.bench_n),
            "--n-slow",
            str(args.bench_n_slow),
            "--out",
            str(out / name),
            "--no-plots",
            "--no-progress",
        ]
        if bs > 1:
            cmd += ["--batch-size", str(bs)]
        if args.bench_dtype:
            cmd += ["--dtype", args.bench_dtype]
        # bench's own --budget (seconds per method per table: 2 tables x 5 methods, plus loading and
        # warm-up) makes a slow method report a smaller sample instead of the run being killed.
        budget = round(timeout / 15, 1) if args.bench_budget is None else args.bench_budget
        if budget > 0:
            cmd += ["--budget", str(budget)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        start = time.perf_counter()
        rec: dict[str, Any] = {"command": cmd[1:], "timeout_s": round(timeout, 1)}
        log = out / f"{name}.log"
        bench_json = out / name / "bench.json"
        bench_json.unlink(missing_ok=True)  # only this run's file counts
        try:
            with open(log, "w") as fh:
                proc = subprocess.run(
                    cmd, cwd=REPO, env=_env_with_src(), stdout=fh, stderr=subprocess.STDOUT, timeout=timeout
                )
            rec["rc"] = proc.returncode
            if proc.returncode == 0 and bench_json.exists():
                rec.update(status="ok", **bench_summary(bench_json))
            else:
                rec.update(status="failed", error=f"rc {proc.returncode}; log tail: {_tail(log)}")
        except subprocess.TimeoutExpired:
            if bench_json.exists():  # killed while exiting, after writing its results
                rec.update(
                    status="ok",
                    note=f"killed at {timeout:.0f} s after writing bench.json",
                    **bench_summary(bench_json),
                )
            else:
                rec.update(status="failed", error=f"timed out after {timeout:.0f} s; log tail: {_tail(log)}")
        except Exception as exc:  # noqa: BLE001
            rec.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        rec["wall_s"] = round(time.perf_counter() - start, 1)
        rec["log"] = str(log)
        runs[name] = rec
    return {"runs": runs}


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# ----------------------------------------------------------------------------- Markdown


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def _status_line(name: str, st: dict[str, Any]) -> str:
    status = st.get("status")
    if status == "running":
        status = "killed (time box) or crashed before it could record a result"
    line = f"- stage `{name}`: {status}, {_num(st.get('seconds'))} s"
    return line + (f"; error: {st['error'].splitlines()[-1]}" if st.get("error") else "")


def markdown(data: dict[str, Any], missing: bool = False) -> str:
    """The summary; with ``missing``, stages absent from the JSON are listed as not recorded."""
    env = data.get("environment", {})
    lines = [
        "# GPU check",
        "",
        f"device: {env.get('device_name')} ({env.get('requested_device')}), torch {env.get('torch')} "
        f"(CUDA {env.get('torch_cuda')}), git {str(env.get('git_commit'))[:10]}",
        "",
    ]
    stages = data.get("stages", {})
    if stages.get("check", {}).get("status") == "failed":
        lines.append(f"- device check failed: {stages['check'].get('error')}")
    for name in STAGES:
        if name in stages:
            lines.append(_status_line(name, stages[name]))
        elif missing:
            lines.append(f"- stage `{name}`: not recorded (not run: no time left, or not asked)")
    lines.append("")
    par = stages.get("parity", {})
    if par.get("presets"):
        lg = par.get("logits", {})
        lines += [
            f"## Parity: {par.get('compare')} ({par.get('n')} prompts, gen_length {par.get('gen_length')}, "
            f"block {par.get('block_length')})",
            "",
            f"one forward's logits: max abs diff {_num(lg.get('max_abs_diff'), '{:.3g}')} "
            f"(largest |logit| {_num(lg.get('max_abs_logit'), '{:.3g}')}), argmax agreement "
            f"{_pct(lg.get('argmax_agree'))}"
            if "max_abs_diff" in lg
            else f"logits: {lg.get('error')}",
            "",
            "| preset | identical rows | nfe device / cpu | rows with equal nfe | accuracy device / cpu "
            "| first differing positions |",
            "|---|---|---|---|---|---|",
        ]
        for p, r in par["presets"].items():
            if r.get("status") != "ok":
                lines.append(f"| {p} | {r.get('status')}: {r.get('error', '')[:80]} | | | | |")
                continue
            firsts = ", ".join(f"row {d['row']} @ {d['first_diff']}" for d in r["first_mismatches"]) or "–"
            lines.append(
                f"| {p} | {r['identical_rows']}/{r['n']} | {r['nfe_device']} / {r['nfe_cpu']} | "
                f"{r['row_nfe_equal']}/{r['n']} | {_pct(r['accuracy_device'])} / {_pct(r['accuracy_cpu'])} "
                f"| {firsts} |"
            )
        lines.append("")
    bf = stages.get("bf16", {})
    if bf.get("presets"):
        lg = bf.get("logits", {})
        lines += [
            f"## bf16: {bf.get('compare')} ({bf.get('n')} prompts)",
            "",
            f"one forward's logits: max abs diff {_num(lg.get('max_abs_diff'), '{:.3g}')}, argmax agreement "
            f"{_pct(lg.get('argmax_agree'))}"
            if "max_abs_diff" in lg
            else f"logits: {lg.get('error')}",
            "",
            "| preset | identical rows | accuracy float32 | accuracy bfloat16 | same score "
            "| nfe f32 / bf16 |",
            "|---|---|---|---|---|---|",
        ]
        for p, r in bf["presets"].items():
            if r.get("status") != "ok":
                lines.append(f"| {p} | {r.get('status')}: {r.get('error', '')[:80]} | | | | |")
                continue
            lines.append(
                f"| {p} | {r['identical_rows']}/{r['n']} ({_pct(r['identical_share'])}) | "
                f"{_pct(r['accuracy_float32'])} | {_pct(r['accuracy_bfloat16'])} | "
                f"{r['answer_agree']}/{r['n']} | {r['nfe_float32']} / {r['nfe_bfloat16']} |"
            )
        lines.append("")
    runs = stages.get("bench", {}).get("runs", {})
    if runs:
        lines += _bench_markdown(runs)
    return "\n".join(lines)


def _bench_markdown(runs: dict[str, Any]) -> list[str]:
    lines = ["## bench --suite main: tokens/s", ""]
    for name, r in runs.items():
        if r.get("status") != "ok":
            err = (r.get("error") or "").strip().splitlines()
            lines.append(f"- `{name}`: {r.get('status')}: {err[0] if err else ''}")
    ok = {k: v for k, v in runs.items() if v.get("status") == "ok"}
    if not ok:
        return lines + [""]
    names = list(ok)
    lines += [
        "",
        "  ".join(
            f"`{k}`: batch {v['batch_size']}, {v['dtype']} on {v['device']}, {_num(v['seconds'])} s"
            for k, v in ok.items()
        ),
        "",
        "| gen_length | method | "
        + " | ".join(f"{k} n | {k} accuracy | {k} tokens/s | {k} latency median (s)" for k in names)
        + " |",
        "|---|---|" + "---|---|---|---|" * len(names),
    ]
    first = ok[names[0]]
    for gi, g in enumerate(first["groups"]):
        for mi, m in enumerate(g["methods"]):
            cells = []
            for k in names:
                try:
                    mm = ok[k]["groups"][gi]["methods"][mi]
                except (IndexError, KeyError):
                    mm = {}
                cells.append(
                    f"{mm.get('n', '–')} | {_pct(mm.get('accuracy'))} | {_num(mm.get('tokens_per_s'))} | "
                    f"{_num(mm.get('latency_median_s'), '{:.4f}')}"
                )
            lines.append(f"| {g['gen_length']} | {m['label']} | " + " | ".join(cells) + " |")
    return lines + [""]


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from streaming_dllm.config import PRESETS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="device under test (default cuda; cpu for a smoke test)")
    p.add_argument(
        "--stages",
        default="parity,bf16,bench",
        help="comma-separated: check (device only, exit 3 if absent), parity, bf16, bench, report "
        "(print the summary of OUT/gpu_check.json); default parity,bf16,bench",
    )
    p.add_argument(
        "--n", type=int, default=32, help="arithmetic test prompts for parity and bf16 (default 32)"
    )
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets (default: all)")
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument(
        "--batch-size", type=int, default=0, help="rows per generate call (default 0: all at once)"
    )
    p.add_argument(
        "--out",
        default=os.environ.get("OUT") or "gpu_check_out",
        help="folder for gpu_check.json and the bench runs (default $OUT)",
    )
    p.add_argument("--deadline-s", type=float, default=540.0, help="time box of this process (default 540)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--bench-n", type=int, default=16)
    p.add_argument("--bench-n-slow", type=int, default=4)
    p.add_argument(
        "--bench-dtype", default=None, help="--dtype for bench (default: bench's own, bf16 on CUDA)"
    )
    p.add_argument(
        "--bench-budget",
        type=float,
        default=None,
        help="bench --budget, seconds per method per table (default: the run's time box / 15; 0: none)",
    )
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    args.presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    bad = sorted(set(args.stages) - set(STAGES) - {"check", "report"})
    if bad:
        p.error(f"--stages: unknown {bad}; choose from check, {', '.join(STAGES)}, report")
    unknown = sorted(set(args.presets) - set(PRESETS))
    if unknown:
        p.error(f"--presets: unknown {unknown}; choose from {', '.join(PRESETS)}")
    if args.n < 1 or args.gen_length < 1 or args.block_length < 1 or args.batch_size < 0:
        p.error("--n, --gen-length and --block-length must be positive, --batch-size non-negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.deadline_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    env = None
    try:
        env = environment(args.device)
    except Exception as exc:  # noqa: BLE001
        env = {"error": f"{type(exc).__name__}: {exc}"}
    if "check" in args.stages:
        return stage_check(args, out, env)
    dec: Decoder | None = None
    failed = False
    for name in (s for s in STAGES if s in args.stages):
        start = time.perf_counter()
        save_stage(
            out,
            name,
            {"status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "args": sys.argv[1:]},
            env,
        )
        try:
            if name == "bench":
                rec = stage_bench(args, out, deadline)
                ok = all(r.get("status") == "ok" for r in rec["runs"].values())
            else:
                if args.device.startswith("cuda") and not torch.cuda.is_available():
                    raise RuntimeError(f"--device {args.device}: torch.cuda.is_available() is False")
                dec = dec or Decoder(args)
                rec = (stage_parity if name == "parity" else stage_bf16)(args, dec, deadline)
                ok = all(r.get("status") == "ok" for r in rec["presets"].values())
            rec = {"status": "ok" if ok else "partial", **rec}
        except Exception as exc:  # noqa: BLE001 - recorded; the next stage still runs
            rec = {
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-3000:],
            }
        rec["seconds"] = round(time.perf_counter() - start, 2)
        failed |= rec["status"] == "failed"
        save_stage(out, name, rec, env)
    print(markdown(load_results(out), missing="report" in args.stages), flush=True)
    print(f"\nresults: {_json_path(out)}", flush=True)
    return 1 if failed else 0


def stage_check(args, out: Path, env: dict[str, Any]) -> int:
    """Is the device there? Records the environment; exit 3 (and says so) when it is not."""
    import torch

    ok = True
    if args.device.startswith("cuda"):
        ok = torch.cuda.is_available() and torch.cuda.device_count() > 0
        if ok:
            torch.zeros(1, device=args.device).add_(1).cpu()  # the device really computes
    rec = {"status": "ok" if ok else "failed", "device": args.device}
    if not ok:
        rec["error"] = (
            f"CUDA is not available to torch {torch.__version__} (torch.version.cuda={torch.version.cuda}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
        )
    save_stage(out, "check", rec, env)
    print(
        f"device check: {env.get('device_name')}, torch {env.get('torch')}" if ok else rec["error"],
        flush=True,
    )
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
