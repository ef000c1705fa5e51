"""Runner of the hostile-input tables: each case is a real subprocess with a time limit.

A case passes when the process exits with the documented code within the time limit, its stderr
ends in one line that names the flag or file (``expect``), no traceback is printed, and its peak
RSS stays under ``RSS_LIMIT_MB`` above a process that just loads the built-in model.

The time limit is ``TIME_LIMIT_S`` (10 s), or three times that baseline process's own wall time
when the machine is so loaded that merely starting Python, importing torch and loading the
built-in model takes more than a third of it: a refusal must cost no more than start-up, and a
busy shared machine must not turn that into a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

TIME_LIMIT_S = 10.0
RSS_LIMIT_MB = 1024
CLI = [sys.executable, "-m", "streaming_dllm.cli"]


@dataclass
class Case:
    """One hostile input: ``argv`` after the interpreter, what it must print and return."""

    name: str
    argv: list[str]
    expect: str
    rc: int = 2
    stdin: bytes = b""
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float


def run(argv: list[str], stdin: bytes = b"", env: dict[str, str] | None = None,
        timeout: float = TIME_LIMIT_S) -> Outcome:
    """Run a command, measuring its wall time and its own peak RSS (``wait4``'s rusage)."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=full_env)
    streams: dict[str, bytes] = {}

    def read(name: str, pipe) -> None:
        streams[name] = pipe.read()

    readers = [threading.Thread(target=read, args=(n, p)) for n, p in (("out", proc.stdout),
                                                                      ("err", proc.stderr))]
    for t in readers:
        t.start()
    try:
        proc.stdin.write(stdin)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    waited: list = []
    waiter = threading.Thread(target=lambda: waited.append(os.wait4(proc.pid, 0)))
    waiter.start()
    waiter.join(timeout)
    if not waited:
        proc.kill()
        waiter.join()
        raise AssertionError(f"{argv[2:]} did not finish within {timeout} s")
    seconds = time.perf_counter() - start
    for t in readers:
        t.join()
    _, status, usage = waited[0]
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Outcome(proc.returncode, streams["out"].decode("utf-8", "replace"),
                   streams["err"].decode("utf-8", "replace"), seconds, usage.ru_maxrss / 1024)


_BASELINE: list[Outcome] = []


def _baseline() -> Outcome:
    """A process that imports the package and loads the built-in model (measured once)."""
    if not _BASELINE:
        code = "import streaming_dllm as sd; sd.load_tokenizer(sd.load_model('builtin'))"
        _BASELINE.append(run([sys.executable, "-c", code], timeout=120))
    return _BASELINE[0]


def baseline_rss_mb() -> float:
    """Peak RSS of a process that imports the package and loads the built-in model."""
    return _baseline().peak_rss_mb


def time_limit_s() -> float:
    """``TIME_LIMIT_S``, stretched on a machine too loaded to start the baseline in a third of it."""
    return max(TIME_LIMIT_S, 3.0 * _baseline().seconds)


def check(case: Case) -> Outcome:
    """Run a case and assert everything the table promises about it."""
    base, limit = baseline_rss_mb(), time_limit_s()
    res = run(case.argv, case.stdin, case.env, timeout=limit)
    assert "Traceback" not in res.stderr, f"{case.name}: traceback\n{res.stderr[-2000:]}"
    assert res.rc == case.rc, f"{case.name}: rc {res.rc} != {case.rc}\n{res.stderr[-2000:]}"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines, f"{case.name}: no message on stderr"
    assert case.expect in lines[-1], f"{case.name}: {case.expect!r} not in the last line {lines[-1]!r}"
    assert res.seconds < limit, f"{case.name}: took {res.seconds:.1f} s (limit {limit:.1f} s)"
    assert res.peak_rss_mb < base + RSS_LIMIT_MB, f"{case.name}: peak RSS {res.peak_rss_mb:.0f} MB"
    return res
