"""The decoding engine: one block-wise loop plus the policies it combines."""

from .decoder import BlockChunk, GenerateOutput, generate, stream
from .scheduler import Scheduler, generate_many

__all__ = ["BlockChunk", "GenerateOutput", "Scheduler", "generate", "generate_many", "stream"]
