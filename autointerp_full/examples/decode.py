"""Token ids to readable text: the tokenizer of the cache's model, and a memoised decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class TokenDecoder:
    """Readable text per token id (byte-level markers such as 'Ġ' resolved), memoised per id.

    `prefill` decodes many ids in one batch and keeps them in a table, so that `lookup` turns a
    whole array of ids into strings with one indexing operation.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._memo: dict[int, str] = {}
        self._table = np.empty(0, dtype=object)  # id -> text, None where not decoded yet
        self._known = np.zeros(0, bool)  # where _table holds the text

    def _clean(self, token_id: int, text: str, piece: Any) -> str:
        # SentencePiece drops a word's leading space when a token is decoded alone.
        if isinstance(piece, str) and piece.startswith("\u2581") and not text.startswith(" "):
            text = " " + text
        self._memo[token_id] = text
        return text

    def token(self, token_id: int) -> str:
        text = self._memo.get(token_id)
        if text is None:
            tok = self.tokenizer
            text = self._clean(
                token_id, tok.decode([token_id]), tok.convert_ids_to_tokens(token_id)
            )
        return text

    def str_tokens(self, ids: Any) -> list[str]:
        memo = self._memo
        return [memo[i] if i in memo else self.token(i) for i in map(int, ids)]

    def prefill(self, ids: Any) -> None:
        """Decode these ids now, in one batch where the tokenizer has one (e.g. every id in
        the cache, once, before forking workers)."""
        todo = [int(i) for i in np.asarray(ids).reshape(-1) if int(i) not in self._memo]
        tok = self.tokenizer
        if todo and hasattr(tok, "batch_decode"):
            texts = _decode_each(tok, todo)
            pieces = tok.convert_ids_to_tokens(todo)
            for i, text, piece in zip(todo, texts, pieces, strict=True):
                self._clean(i, text, piece)
        else:
            for i in todo:
                self.token(i)
        if self._memo:
            table = np.empty(max(self._memo) + 1, dtype=object)
            table[list(self._memo)] = list(self._memo.values())
            self._table = table
            self._known = np.zeros(len(table), bool)
            self._known[list(self._memo)] = True

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """The text of every id in an integer array, as an object array of the same shape."""
        ids = np.asarray(ids)
        if ids.size and int(ids.max()) >= len(self._table):
            self.prefill(np.unique(ids))
        elif not self._known[ids].all():
            self.prefill(np.unique(ids[~self._known[ids]]))
        return self._table[ids]

    def text(self, ids: Any) -> str:
        return "".join(self.str_tokens(ids))


def _decode_each(tokenizer: Any, ids: list[int]) -> list[str]:
    """tokenizer.decode([i]) for every id; straight through the Rust backend when decode would
    add nothing to it (20 times faster over a whole vocabulary)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and getattr(tokenizer, "clean_up_tokenization_spaces", True) is False:
        return backend.decode_batch([[i] for i in ids], skip_special_tokens=False)
    return tokenizer.batch_decode([[i] for i in ids])


def as_decoder(tokenizer: Any) -> TokenDecoder:
    return tokenizer if isinstance(tokenizer, TokenDecoder) else TokenDecoder(tokenizer)


def load_tokenizer(name: str, token: str | None = None) -> Any:
    """The tokenizer of a hub id, a local model folder, or a local .gguf file."""
    from transformers import AutoTokenizer

    from autointerp_full.errors import UserError

    path = Path(name).expanduser()
    try:
        if path.is_file() and path.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return AutoTokenizer.from_pretrained(name, token=token)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"--model: cannot load the tokenizer of {name!r}: {first}") from None
