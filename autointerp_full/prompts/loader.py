"""Loading prompts: the built-in set (default_prompts.yaml, beside this module) and the
--prompt_override file laid over it, every key and value checked."""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autointerp_full.errors import UserError
from autointerp_full.prompts.prompt_set import PLACEHOLDER, Prompts

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig

log = logging.getLogger(__name__)

DEFAULTS_FILE = Path(__file__).with_name("default_prompts.yaml")
ENV_VAR = "PROMPT_CONFIG_FILE"
SCHEMA_KEY = "schema"  # a YAML mapping under this name is a JSON Schema, not more prompts


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": "text"}} -> {"a.b": "text"}; a `schema` mapping stays whole."""
    if not isinstance(data, dict) or prefix.rpartition(".")[2] == SCHEMA_KEY:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _read_yaml(path: Path, label: str) -> dict[str, Any]:
    import yaml

    where = f"{label}: {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: cannot read the file ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise UserError(f"{where}: YAML syntax error{line}: {problem}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: YAML syntax error: {exc}") from None
    if data is None:
        raise UserError(f"{where}: the file is empty; it should map prompt keys to text")
    if not isinstance(data, dict):
        raise UserError(
            f"{where}: expected a mapping such as 'explainers: {{default: {{system: ...}}}}', "
            f"got {type(data).__name__}"
        )
    return _flatten(data)


def _is_schema_key(key: str) -> bool:
    return key.rpartition(".")[2] == SCHEMA_KEY


def default_prompts() -> Prompts:
    data = _read_yaml(DEFAULTS_FILE, "built-in prompts")
    texts = {k: v for k, v in data.items() if not _is_schema_key(k)}
    schemas = {k.rpartition(".")[0]: v for k, v in data.items() if _is_schema_key(k)}
    return Prompts(texts, schemas=schemas)


def apply_override(defaults: Prompts, path: Path, label: str) -> Prompts:
    """Defaults with the file's prompts laid over them, after checking every key and value."""
    where = f"{label}: {path}"
    values = {k: defaults.get(k) for k in defaults.keys()}
    for key, value in _read_yaml(path, label).items():
        if _is_schema_key(key):
            raise UserError(
                f"{where}: {key!r} cannot be overridden: answer schemas are fixed (the parsers "
                "read them); an override changes the prompt text only"
            )
        if key not in values:
            close = difflib.get_close_matches(key, values, n=1)
            hint = (
                f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(values)}"
            )
            raise UserError(f"{where}: unknown prompt key {key!r}{hint}")
        if not isinstance(value, str):
            raise UserError(f"{where}: prompt {key!r} must be text, got {type(value).__name__}")
        if PLACEHOLDER in values[key] and PLACEHOLDER not in value:
            raise UserError(
                f"{where}: prompt {key!r} lacks the {PLACEHOLDER} placeholder where the examples go"
            )
        values[key] = value
    return Prompts(values, source=str(path), schemas=defaults._schemas)


def find_override_file(cfg: RunConfig) -> tuple[Path, str]:
    """(file, how it was found).

    Order: --prompt_config_file, else ./prompts.yaml, else $PROMPT_CONFIG_FILE.
    """
    if cfg.prompt_config_file:
        return Path(cfg.prompt_config_file).expanduser(), "--prompt_config_file"
    local = Path.cwd() / "prompts.yaml"
    if local.is_file():
        return local, "--prompt_config_file (default ./prompts.yaml)"
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser(), f"${ENV_VAR}"
    raise UserError(
        "--prompt_config_file: --prompt_override needs a prompts file; give "
        f"--prompt_config_file, put prompts.yaml in {Path.cwd()}, or set ${ENV_VAR}"
    )


def load_prompts(cfg: RunConfig) -> Prompts:
    """The run's prompts: the built-ins, overridden from a YAML file with --prompt_override."""
    defaults = default_prompts()
    if not cfg.prompt_override:
        if cfg.prompt_config_file:
            log.warning("--prompt_config_file is ignored without --prompt_override")
        return defaults
    path, label = find_override_file(cfg)
    prompts = apply_override(defaults, path, label)
    log.info("prompts overridden from %s", path)
    return prompts
