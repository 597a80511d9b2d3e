"""Tokenizers from a Hugging Face `tokenizer.json`, through the `tokenizers` library.

`tokenizer_config.json`, when present, decides whether a BOS token is prepended (``add_bos_token``
and ``bos_token``), as HF's ``PreTrainedTokenizerFast`` does; without it the post-processor of
`tokenizer.json` decides.
"""

from __future__ import annotations

import json
from pathlib import Path

from attnscope.errors import LoadError


class Tokenizer:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self._tok = HFTokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # the tokenizers library raises a bare Exception on bad files
            raise LoadError(f"{path / 'tokenizer.json'}: not a valid tokenizer.json ({exc})") from None
        self.add_bos: bool | None = None  # None: leave it to tokenizer.json's post-processor
        self.bos_id: int | None = None
        cfg_path = path / "tokenizer_config.json"
        if cfg_path.is_file():
            try:
                cfg = json.loads(cfg_path.read_text())
            except json.JSONDecodeError as exc:
                raise LoadError(f"{cfg_path}: malformed JSON ({exc})") from None
            bos = cfg.get("bos_token")
            if isinstance(bos, dict):
                bos = bos.get("content")
            if bos is not None:
                self.bos_id = self._tok.token_to_id(bos)
            if "add_bos_token" in cfg:
                self.add_bos = bool(cfg["add_bos_token"]) and self.bos_id is not None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with the BOS token when the tokenizer's config asks for it."""
        if self.add_bos is None:
            return self._tok.encode(text).ids
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if self.add_bos else ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_texts(self, ids: list[int]) -> list[str]:
        """Each token decoded on its own (byte-level pieces of a multi-byte character show as U+FFFD)."""
        return [self._tok.decode([i], skip_special_tokens=False) for i in ids]
