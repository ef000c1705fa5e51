"""streaming-dllm: a fast inference engine for diffusion language models."""

from .loading import load_model, load_tokenizer

__all__ = ["load_model", "load_tokenizer"]
__version__ = "0.1.0"
