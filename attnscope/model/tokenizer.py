"""Tokenizers from a Hugging Face `tokenizer.json`, through the `tokenizers` library.

`tokenizer_config.json`, when present, decides whether a BOS token is prepended (``add_bos_token``
and ``bos_token``), as HF's ``PreTrainedTokenizerFast`` does; without it the post-processor of
`tokenizer.json` decides.
"""

from __future__ import annotations

from pathlib import Path

from attnscope.errors import LoadError
from attnscope.model.config import read_json, show


class Tokenizer:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer as HFTokenizer

        self.path = path / "tokenizer.json"
        try:
            self._tok = HFTokenizer.from_file(str(self.path))
        except Exception as exc:  # the tokenizers library raises a bare Exception on bad files
            raise LoadError(f"{self.path}: not a valid tokenizer.json ({exc})") from None
        self.add_bos: bool | None = None  # None: leave it to tokenizer.json's post-processor
        self.bos_id: int | None = None
        cfg_path = path / "tokenizer_config.json"
        if cfg_path.is_file():
            self._read_config(cfg_path)

    @classmethod
    def from_backend(cls, backend, source: Path) -> Tokenizer:
        """A tokenizer built in memory (a `tokenizers.Tokenizer`, e.g. from a GGUF file's metadata) whose
        post-processor adds the special tokens; `source` names it in messages."""
        tok = cls.__new__(cls)
        tok.path, tok._tok, tok.add_bos, tok.bos_id = source, backend, None, None
        return tok

    def _read_config(self, cfg_path: Path) -> None:
        cfg = read_json(cfg_path)
        if not isinstance(cfg, dict):
            raise LoadError(f"{cfg_path}: expected a JSON object, got a {type(cfg).__name__}")
        bos = cfg.get("bos_token")
        if isinstance(bos, dict):  # an AddedToken: {"content": "<s>", ...}
            bos = bos.get("content")
        if bos is not None and not isinstance(bos, str):
            raise LoadError(f"{cfg_path}: bos_token must be a string, got {show(cfg.get('bos_token'))}")
        if bos is not None:
            self.bos_id = self._tok.token_to_id(bos)
        add_bos = cfg.get("add_bos_token")
        if add_bos is None:
            return
        if not isinstance(add_bos, bool):
            raise LoadError(f"{cfg_path}: add_bos_token must be true or false, got {show(add_bos)}")
        if add_bos and self.bos_id is None:
            why = "sets no bos_token" if bos is None else f"names bos_token {bos!r}, which tokenizer.json lacks"
            raise LoadError(f"{cfg_path}: add_bos_token is true but the file {why}")
        self.add_bos = add_bos

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with the BOS token when the tokenizer's config asks for it; a `LoadError`
        when the tokenizer cannot encode it: a model that raises for a piece outside its vocabulary
        (WordLevel with no unknown token), or one that drops it silently (BPE with no unknown token)."""
        try:
            encoding = self._tok.encode(text, add_special_tokens=self.add_bos is None)
        except Exception as exc:  # the tokenizers library raises a bare Exception
            raise LoadError(f"{self.path} cannot encode the prompt {show(text, 40)}: {exc}") from None
        dropped = self._dropped(text, encoding.offsets)
        if dropped is not None:
            raise LoadError(
                f"{self.path} cannot encode {text[dropped]!r} (character {dropped} of the prompt): its "
                "vocabulary has no token for it and no unknown token"
            )
        ids = encoding.ids
        return [self.bos_id, *ids] if self.add_bos and self.bos_id is not None else ids

    def _dropped(self, text: str, offsets: list[tuple[int, int]]) -> int | None:
        """The index of the first character the tokenizer drops, or None. A character no token covers
        (white space aside, which pre-tokenizers may drop) shows that something was dropped; which one
        is the first that encodes to nothing on its own and that the normalizer does not delete (the
        offsets after a dropped character are shifted, so they cannot say)."""
        covered = bytearray(len(text))
        for start, end in offsets:
            end = min(end, len(text))
            if end > start:
                covered[start:end] = b"\x01" * (end - start)
        if all(covered[i] or char.isspace() for i, char in enumerate(text)):
            return None
        normalizer, seen = self._tok.normalizer, set()
        for i, char in enumerate(text):
            if char.isspace() or char in seen:
                continue
            seen.add(char)
            if not self._tok.encode(char, add_special_tokens=False).ids:
                if normalizer is None or normalizer.normalize_str(char).strip():
                    return i
        return None

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_texts(self, ids: list[int]) -> list[str]:
        """Each token decoded on its own (byte-level pieces of a multi-byte character show as U+FFFD)."""
        return [self._tok.decode([i], skip_special_tokens=False) for i in ids]
