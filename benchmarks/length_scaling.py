"""Benchmark: length scaling (vanilla, fast-dllm, streaming at 256 to 2048).

Thin wrapper over ``streaming-dllm bench --suite length``; extra flags pass through
(e.g. ``--quick``, ``--n 8``, ``--batch-size 4``, ``--model PATH``). Output in bench_out/length_scaling/.
"""

import sys

from streaming_dllm.cli import main

ARGS = ["bench", "--suite", "length", "--out", "bench_out/length_scaling"]

if __name__ == "__main__":
    raise SystemExit(main(ARGS + sys.argv[1:]))
