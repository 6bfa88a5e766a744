"""How much text a prompt may hold, known from the tokenizer and the model's context: text that cannot fit is
refused from its length alone, before any tokenising."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import APIError

__all__ = ["TextBudget"]

FALLBACK_CONTEXT = 32_768  # the text bound of a model whose config names no context length


@dataclass(frozen=True)
class TextBudget:
    """How much text a prompt may hold, known from its length alone.

    Every token stands for at most `chars_per_token` characters and `bytes_per_token` UTF-8 bytes of text (the
    longest entry of the tokenizer's vocabulary, special tokens included), so a text of N characters needs at least
    N / chars_per_token tokens. A conversation whose text is longer than `(context - max_tokens) * chars_per_token`
    characters (or bytes) cannot fit, and is refused without being tokenised; shorter text is then counted exactly
    (bounded work). For a tokenizer whose normaliser may shrink text (NFKC ...) or whose unknown-character token
    may cover a run of characters, the bounds are taken 4 times larger.
    """

    context: int
    chars_per_token: int
    bytes_per_token: int

    @classmethod
    def of(cls, tokenizer: Any, context: int | None) -> TextBudget:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        spec: dict[str, Any] = {}
        if backend is not None:
            vocab = list(backend.get_vocab(with_added_tokens=True))
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                spec = json.loads(backend.to_str())
        else:
            vocab = list(tokenizer.get_vocab())
        vocab += [str(t) for t in getattr(tokenizer, "all_special_tokens", [])]
        chars = max(map(len, vocab), default=1)
        byte_level = any(p.get("type") == "ByteLevel" for p in _parts(spec.get("pre_tokenizer")))
        if byte_level:  # one character of a byte-level token is one byte
            added = [*getattr(tokenizer, "get_added_vocab", dict)(), *getattr(tokenizer, "all_special_tokens", [])]
            nbytes = max([chars, *(len(str(t).encode("utf-8", "surrogatepass")) for t in added)])
        else:  # sentencepiece style: "▁" stands for a space, "<0x0A>" for one byte
            nbytes = max((len(t.replace("\u2581", " ").encode("utf-8", "surrogatepass")) for t in vocab), default=1)
        model = spec.get("model") or {}
        exact = (model.get("type") == "BPE" and (byte_level or bool(model.get("byte_fallback")))
                 and all(_keeps_length(n) for n in _parts(spec.get("normalizer"))))
        factor = 1 if exact else 4
        return cls(context or FALLBACK_CONTEXT, max(1, chars) * factor, max(1, nbytes) * factor)

    def check(self, texts: Sequence[str], max_tokens: int) -> None:
        """400 when `texts` (the conversation's text) cannot fit in the context beside `max_tokens`, or is not
        valid Unicode; O(1) for ASCII text, one pass over text that is short enough to be counted anyway."""
        room = max(0, self.context - max_tokens)
        chars = sum(map(len, texts))
        if chars > room * self.chars_per_token:
            raise self._refusal(f"{chars} characters")
        nbytes = 0
        for text in texts:
            if text.isascii():
                nbytes += len(text)
                continue
            try:
                nbytes += len(text.encode("utf-8"))
            except UnicodeEncodeError:
                raise APIError(400, "message text is not valid Unicode: it holds a lone surrogate (a \\ud800-"
                                    "\\udfff escape that is not half of a pair)") from None
        if nbytes > room * self.bytes_per_token:
            raise self._refusal(f"{nbytes} bytes of UTF-8")

    def _refusal(self, size: str) -> APIError:
        return APIError(400, f"the conversation's text ({size}) cannot fit in the model's context of {self.context} "
                             f"tokens beside max_tokens (a token is at most {self.chars_per_token} characters for "
                             "this tokenizer): shorten the question or the history, or lower max_tokens",
                        code="context_length_exceeded")


def _parts(spec: Any) -> list[dict[str, Any]]:
    """The steps of a tokenizer.json normaliser or pre-tokeniser (a Sequence flattened; none: [])."""
    if not isinstance(spec, dict):
        return []
    inner = spec.get("normalizers") or spec.get("pretokenizers")
    if spec.get("type") == "Sequence" and isinstance(inner, list):
        return [p for step in inner for p in _parts(step)]
    return [spec]


def _keeps_length(step: dict[str, Any]) -> bool:
    """Whether a normaliser step can only keep or grow the text: Prepend, and Replace of a string by one no shorter
    (sentencepiece's " " -> "▁")."""
    if step.get("type") == "Prepend":
        return True
    if step.get("type") == "Replace":
        pattern = step.get("pattern") or {}
        return "String" in pattern and len(str(step.get("content", ""))) >= len(str(pattern["String"]))
    return False

