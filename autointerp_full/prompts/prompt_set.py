"""Prompts: a flat mapping of dotted prompt key ("explainers.default.system") to text, with
placeholder rendering and the answer schema each prompt declares."""

from __future__ import annotations

from typing import Any

from autointerp_full.prompts.answer_schema import render_schema

PLACEHOLDER = "{prompt}"


class Prompts:
    """A flat mapping of prompt key to text, with placeholder rendering."""

    def __init__(
        self,
        values: dict[str, str],
        source: str | None = None,
        schemas: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self._values = dict(values)
        self.source = source  # the override file, or None for the built-ins
        self._schemas = dict(schemas or {})  # "scorers.detection" -> schema template

    def schema(self, key: str, n: int = 1) -> dict[str, Any] | None:
        """The JSON Schema of the answer to prompt `key` for a request about `n` items (examples
        or tokens), or None when that prompt declares none. See render_schema."""
        template = self._schemas.get(key.rpartition(".")[0])
        return None if template is None else render_schema(template, n)

    def keys(self) -> list[str]:
        return sorted(self._values)

    def get(self, key: str) -> str:
        try:
            return self._values[key]
        except KeyError:
            raise KeyError(f"no prompt {key!r}; known prompts: {', '.join(self.keys())}") from None

    def render(self, key: str, **fields: str) -> str:
        """The prompt with `{name}` replaced by each field (other braces are left alone)."""
        text = self.get(key)
        for name, value in fields.items():
            text = text.replace("{" + name + "}", value)
        return text

    def messages(self, key: str, prompt: str) -> list[dict[str, str]]:
        """Chat messages for this prompt with `prompt` (the examples) substituted.

        Text before `{prompt}` is the system message, the same for every latent so that a server's
        prefix cache can reuse it; `prompt` and any text after the placeholder form the user
        message. Without a placeholder, the whole prompt is the system message.
        """
        text = self.get(key)
        before, found, after = text.partition(PLACEHOLDER)
        user = prompt + after.rstrip() if found else prompt
        return [
            {"role": "system", "content": before.strip()},
            {"role": "user", "content": user.strip()},
        ]
