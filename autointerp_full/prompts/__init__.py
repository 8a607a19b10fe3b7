"""Prompts: the built-in set (default_prompts.yaml) and the --prompt_override loader.

Keys are dotted paths into the YAML ("explainers.default.system"). An override file may replace
any subset; everything it says is checked, and any problem is a one-line UserError naming the
file and the key. There is no silent fallback to the defaults.

A `schema` key beside prompts ("scorers.detection.schema") declares, as JSON Schema, the answer
those prompts ask for; `Prompts.schema(key, n)` renders it for one request. Schemas are part of
the product (the parsers read them), so an override changes the text only.

Modules: prompt_set (the Prompts mapping), answer_schema (render_schema), loader (the built-ins
and the override file).
"""

from autointerp_full.prompts.answer_schema import render_schema
from autointerp_full.prompts.loader import (
    DEFAULTS_FILE,
    ENV_VAR,
    SCHEMA_KEY,
    apply_override,
    default_prompts,
    find_override_file,
    load_prompts,
)
from autointerp_full.prompts.prompt_set import PLACEHOLDER, Prompts

__all__ = [
    "DEFAULTS_FILE",
    "ENV_VAR",
    "PLACEHOLDER",
    "SCHEMA_KEY",
    "Prompts",
    "apply_override",
    "default_prompts",
    "find_override_file",
    "load_prompts",
    "render_schema",
]
