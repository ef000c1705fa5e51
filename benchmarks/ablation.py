"""Benchmark: ablation (suffix pruning, dynamic threshold, early exit switched on one at a time).

Thin wrapper over ``streaming-dllm bench --suite ablation``; extra flags pass through
(e.g. ``--quick``, ``--n 8``, ``--batch-size 4``, ``--model PATH``). Output in bench_out/ablation/.
"""

import sys

from streaming_dllm.cli import main

ARGS = ["bench", "--suite", "ablation", "--out", "bench_out/ablation"]

if __name__ == "__main__":
    raise SystemExit(main(ARGS + sys.argv[1:]))
