"""``python -m streaming_dllm.server``: the server without the main CLI."""

import sys

from .cli import main

sys.exit(main())
