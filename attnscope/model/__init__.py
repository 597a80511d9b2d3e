"""The Llama-family model, its config, KV cache, tokenizer and loaders."""

from attnscope.model.config import ModelConfig
from attnscope.model.llama import KVCache, Transformer

__all__ = ["KVCache", "ModelConfig", "Transformer"]
