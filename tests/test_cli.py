"""The command line, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from streaming_dllm.loading import BUILTIN_DIR

CLI = [sys.executable, "-m", "streaming_dllm.cli"]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_help_documents_every_knob():
    out = _run("generate", "--help").stdout
    for flag in (
        "--method",
        "--gen-length",
        "--block-length",
        "--steps",
        "--unmask",
        "--threshold",
        "--alpha",
        "--factor",
        "--cache",
        "--window",
        "--tail-keep",
        "--early-exit",
        "--remasking",
        "--temperature",
        "--mask-id",
        "--eos-id",
        "--seed",
        "--model",
        "--device",
        "--dtype",
    ):
        assert flag in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--gen-length", "100", "--block-length", "32"], "DecodeConfig.gen_length=100"),
        (["--threshold", "2"], "DecodeConfig.threshold=2.0"),
        (["--window", "wide"], "--window must be an integer or 'none'"),
        (["--method", "fastest"], "invalid choice: 'fastest'"),
        (["--model", "/no/such/folder"], "no such folder"),
    ],
)
def test_bad_flags_fail_cleanly(args, message):
    res = _run("generate", "--prompt", "hi", "--device", "cpu", *args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_empty_prompt_on_stdin_is_a_clear_error():
    res = subprocess.run([*CLI, "generate", "--device", "cpu"], input="  \n", capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2
    assert "the prompt is empty" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.skipif(not (BUILTIN_DIR / "model.safetensors").is_file(), reason="built-in weights not built")
def test_generate_with_builtin_prints_answer_and_summary():
    res = _run(
        "generate",
        "--prompt",
        "Mia has 12 apples. Mia buys 7 apples. Mia gives 5 apples to Tom. How many apples does Mia have now?",
        "--device",
        "cpu",
        "--method",
        "streaming",
        "--gen-length",
        "128",
    )
    assert res.returncode == 0, res.stderr
    assert "The answer is" in res.stdout
    assert "nfe" in res.stderr and "tokens/s" in res.stderr


def _module_level_imports() -> dict[str, set[str]]:
    """Each module of src/streaming_dllm -> the package modules its module-level code imports
    (function bodies and ``if TYPE_CHECKING:`` blocks excluded)."""
    import ast
    from pathlib import Path

    import streaming_dllm

    root = Path(streaming_dllm.__file__).parent
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        names[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)

    def top_level(body):
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                yield from top_level(node.orelse)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                yield from top_level(node.body)
                for extra in (getattr(node, "orelse", []), getattr(node, "finalbody", [])):
                    yield from top_level(extra)
                for handler in getattr(node, "handlers", []):
                    yield from top_level(handler.body)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node

    graph: dict[str, set[str]] = {}
    for mod, (path, is_pkg) in names.items():
        package = mod if is_pkg else mod.rpartition(".")[0]
        deps = set()
        for node in top_level(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                src = node.module if node.level == 0 else ".".join(p for p in (base, node.module) if p)
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in names else src for a in node.names]
            deps |= {t for t in targets if t in names and t != mod}
        graph[mod] = deps
    return graph


def test_no_import_circle_in_module_level_imports():
    graph = _module_level_imports()
    assert "streaming_dllm.cli.options" in graph and "streaming_dllm.tasks.arith_eval" in graph
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(mod: str) -> None:
        state[mod] = 1
        stack.append(mod)
        for dep in sorted(graph[mod]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod)


def test_help_lists_each_presets_defaults():
    from streaming_dllm.config import PRESETS, DecodeConfig

    out = " ".join(_run("generate", "--help").stdout.split())  # argparse may wrap; compare words
    for name in PRESETS:
        cfg = DecodeConfig.preset(name)
        line = out.split(f" {name}: ", 1)[1]
        for field in ("unmask", "threshold", "alpha", "cache", "window", "early_exit"):
            value = getattr(cfg, field)
            shown = f"{field}={'none' if value is None else value}"
            assert shown in line.split(" every preset:")[0], (name, field)
    assert "every preset: gen_length=256" in out  # block_length varies (sdar: 4)


@pytest.mark.skipif(not (BUILTIN_DIR / "model.safetensors").is_file(), reason="built-in weights not built")
def test_summary_counts_the_answer_tokens_like_the_server(capsys):
    """The summary's token count is the answer's length (text.answer_ids): the server's
    completion_tokens, not every non-EOS position of the canvas."""
    import re

    import streaming_dllm as sd
    from streaming_dllm.cli import main
    from streaming_dllm.text import answer_ids, encode_prompt, stop_ids

    prompt = "Mia has 12 apples. Mia buys 7 apples. How many apples does Mia have now?"
    assert main(["generate", "--prompt", prompt, "--device", "cpu", "--method", "vanilla",
                 "--gen-length", "64"]) == 0
    captured = capsys.readouterr()
    counted = int(re.search(r"\] (\d+) tokens", captured.err).group(1))
    model = sd.load_model("builtin", device="cpu")
    tok = sd.load_tokenizer(model)
    cfg = sd.DecodeConfig.preset("vanilla", gen_length=64)
    gen = sd.generate(model, [encode_prompt(tok, prompt)], cfg).generated(0)
    answer = answer_ids(gen, stop_ids(model, tok))
    assert counted == len(answer) > 0
    assert captured.out.strip() == tok.decode(answer, skip_special_tokens=True).strip()


@pytest.mark.parametrize("argv", [
    ["generate", "--prompt", "hi", "--seed", str(10**25)],
    ["generate", "--prompt", "hi", "--device", "meta"],
    ["bench", "--threads", "-1"],
])
def test_a_flag_mistake_is_reported_before_torch_is_imported(argv):
    code = ("import sys\nfrom streaming_dllm.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert e.code == 2\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "error: --" in res.stderr
