"""``python -m streaming_dllm``: the ``streaming-dllm`` command (``torchrun ... -m streaming_dllm serve``)."""

import sys

from .cli import main

sys.exit(main())
