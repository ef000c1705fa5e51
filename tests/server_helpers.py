"""Shared helpers of the server tests: a model to serve and a real uvicorn server on loopback."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import torch
import uvicorn

import streaming_dllm as sd
from streaming_dllm.loading import BUILTIN_DIR
from streaming_dllm.server import ServerSettings, create_app


def builtin_ready() -> bool:
    return all((BUILTIN_DIR / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))


def untrained_checkpoint(folder: Path) -> Path:
    """An untrained LLaDA with the built-in's shape and tokenizer (used until the weights ship)."""
    from safetensors.torch import save_file

    from streaming_dllm.models.llada import LLaDAModel
    from streaming_dllm.tasks import arith
    from streaming_dllm.tasks import tokenizer as tok_lib

    if (BUILTIN_DIR / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(BUILTIN_DIR))
    else:
        texts = [p.prompt + "\n" + p.solution for p in arith.problems("train", 2000)]
        tok = tok_lib.train_tokenizer(texts)
    tok_lib.save_tokenizer(tok, folder)
    vocab = len(tok)
    config = {"architectures": ["LLaDAModelLM"], "model_type": "llada", "d_model": 256, "n_heads": 8,
              "n_kv_heads": 8, "n_layers": 6, "mlp_hidden_size": 704, "vocab_size": vocab,
              "embedding_size": vocab, "rope": True, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
              "include_bias": False, "weight_tying": False, "max_sequence_length": 4096,
              **tok_lib.special_ids(tok)}
    import json

    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    save_file(LLaDAModel(config).state_dict(), str(folder / "model.safetensors"))
    return folder


_LOADED: dict[str, tuple[object, object]] = {}


def load_served_model(tmp_factory) -> tuple[object, object]:
    """The checkpoint in $STREAMING_DLLM_SERVER_TEST_MODEL, else the built-in model when its
    weights exist, else an untrained stand-in (loaded once per session)."""
    torch.set_num_threads(1)
    if "model" not in _LOADED:
        path = os.environ.get("STREAMING_DLLM_SERVER_TEST_MODEL")
        if not path:
            path = "builtin" if builtin_ready() else str(untrained_checkpoint(tmp_factory.mktemp("ckpt")))
        model = sd.load_model(path)
        _LOADED["model"] = (model, sd.load_tokenizer(model))
    return _LOADED["model"]


class LiveServer:
    """The real app under uvicorn in a thread, on a free loopback port."""

    def __init__(self, model, tokenizer, settings: ServerSettings) -> None:
        self.app = create_app(model, tokenizer, settings)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
