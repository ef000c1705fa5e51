"""Benchmark: main table (vanilla, prefix-cache, fast-dllm, fast-dllm-dual, streaming at 256 and 512).

Thin wrapper over ``streaming-dllm bench --suite main``; extra flags pass through
(e.g. ``--quick``, ``--n 8``, ``--batch-size 4``, ``--model PATH``). Output in bench_out/main_table/.
"""

import sys

from streaming_dllm.cli import main

ARGS = ["bench", "--suite", "main", "--out", "bench_out/main_table"]

if __name__ == "__main__":
    raise SystemExit(main(ARGS + sys.argv[1:]))
