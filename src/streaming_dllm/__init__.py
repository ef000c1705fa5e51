"""streaming-dllm: a fast inference engine for diffusion language models."""

from .config import PRESETS, DecodeConfig
from .engine import BlockChunk, GenerateOutput, generate, stream
from .loading import CheckpointError, load_model, load_tokenizer

__all__ = [
    "PRESETS",
    "BlockChunk",
    "CheckpointError",
    "DecodeConfig",
    "GenerateOutput",
    "generate",
    "load_model",
    "load_tokenizer",
    "stream",
]
__version__ = "0.1.0"
