"""Benchmark: accuracy-vs-throughput scatter of every method (scatter.png, from the main table).

Thin wrapper over ``streaming-dllm bench --suite main``; extra flags pass through
(e.g. ``--quick``, ``--n 8``, ``--batch-size 4``, ``--model PATH``). Output in bench_out/scatter/.
"""

import sys

from streaming_dllm.cli import main

ARGS = ["bench", "--suite", "main", "--out", "bench_out/scatter"]

if __name__ == "__main__":
    raise SystemExit(main(ARGS + sys.argv[1:]))
