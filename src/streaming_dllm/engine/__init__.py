"""The decoding engine: one block-wise loop plus the policies it combines."""

from .decoder import BlockChunk, GenerateOutput, generate, stream

__all__ = ["BlockChunk", "GenerateOutput", "generate", "stream"]
