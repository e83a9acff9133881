"""Text tokenizers: byte-level (offline default) or a local Hugging Face tokenizer.

A tokenizer maps a transcript to ids in ``[0, vocab_size)``. The TTS sequence's own special tokens
(begin-of-sequence, voice prompt, text, audio) live *after* that range (``model.sequence``), so a
pretrained tokenizer's vocabulary is used unchanged and its embedding rows load as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class TokenizerError(RuntimeError):
    """A tokenizer could not be loaded; the message names the directory and what is missing."""


class TextTokenizer(Protocol):
    vocab_size: int
    name: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255: works for every language, offline, with no training."""

    vocab_size = 256
    name = "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class PretrainedTokenizer:
    """A local Hugging Face tokenizer directory (``tokenizer.json`` ...), loaded without a hub."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise TokenizerError(f"tokenizer directory {self.path} does not exist")
        try:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        except Exception as e:  # transformers raises many types; say where it failed
            raise TokenizerError(
                f"could not load a tokenizer from {self.path} ({type(e).__name__}: {e}); the directory needs "
                "tokenizer.json or the files of a slow tokenizer"
            ) from e
        # len() counts added tokens too; the embedding table must cover every id encode() can return.
        # A model's embedding table is often padded past the tokenizer (config.json vocab_size):
        # report the table's size so the TTS specials go after the pretrained rows, not into them.
        self.vocab_size = len(self._tok)
        cfg = self.path / "config.json"
        if cfg.exists():
            import json

            c = json.loads(cfg.read_text())
            rows = c.get("vocab_size") or c.get("text_config", {}).get("vocab_size")
            if rows:
                self.vocab_size = max(self.vocab_size, int(rows))
        self.name = f"hf:{self.path.name}"

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


def load_tokenizer(spec: str) -> TextTokenizer:
    """``"bytes"`` or ``"hf:<dir>"`` / a directory path -> a tokenizer."""
    if spec in ("", "bytes"):
        return ByteTokenizer()
    path = spec[3:] if spec.startswith("hf:") else spec
    return PretrainedTokenizer(path)
