"""Benchmark: window W and alpha sweeps of streaming (accuracy and throughput).

Thin wrapper over ``streaming-dllm bench --suite window alpha``; extra flags pass through
(e.g. ``--quick``, ``--n 8``, ``--batch-size 4``, ``--model PATH``). Output in bench_out/sweeps/.
"""

import sys

from streaming_dllm.cli import main

ARGS = ["bench", "--suite", "window", "alpha", "--out", "bench_out/sweeps"]

if __name__ == "__main__":
    raise SystemExit(main(ARGS + sys.argv[1:]))
