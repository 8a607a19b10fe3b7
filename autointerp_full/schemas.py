"""Check an artifact folder against its JSON Schema before a stage reads it.

The schemas are written once in the repository's `shared/schemas/`; the package ships an
identical copy in `autointerp_full/schema_files/` (package data) so that a plain
`pip install` (the Docker images) finds them too. tests/test_components.py keeps the two equal.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from autointerp_full import layout
from autointerp_full.cache import format as cache_format
from autointerp_full.errors import UserError

SCHEMA_DIR = Path(__file__).parent / "schema_files"

# artifact kind -> the schema of each of its files
KINDS = ("cache", "examples", "explanations", "scores", "summary", "output")


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema `shared/schemas/<name>.schema.json`, from the packaged copy."""
    path = SCHEMA_DIR / f"{name}.schema.json"
    if not path.exists():
        raise UserError(f"schema {name!r} not found in {SCHEMA_DIR}")
    return json.loads(path.read_text(encoding="utf-8"))


@cache
def _validator(name: str) -> Any:
    from jsonschema import Draft202012Validator

    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def check(name: str, data: Any, where: str) -> None:
    """Raise UserError naming `where` and the first violation of schema `name`."""
    errors = sorted(_validator(name).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        at = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(f"{where}: does not match the {name} schema at {at}: {err.message}{more}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc})") from None


def validate_artifact(kind: str, path: Path) -> None:
    """Check the artifact `kind` stored at `path` (its folder, or one of its files).

    kinds: cache (latents/ or latents/<hookpoint>/), examples, explanations, scores, summary.
    """
    if kind not in KINDS:
        raise UserError(
            f"validate_artifact: unknown kind {kind!r} (choose from {', '.join(KINDS)})"
        )
    path = Path(path)
    if not path.exists():
        raise UserError(f"{kind} artifact {path}: does not exist")
    {
        "cache": _validate_cache,
        "examples": _validate_examples,
        "explanations": _validate_explanations,
        "scores": _validate_scores,
        "summary": _validate_summary,
        "output": _validate_output,
    }[kind](path)


# ------------------------------------------------------------------------------ kinds


def _validate_cache(path: Path) -> None:
    if path.is_file():  # the config alone, e.g. fetched without the data files
        _check_cache_config(path, with_files=False)
        return
    if (path / cache_format.CONFIG_FILE).exists():
        _check_cache_config(path / cache_format.CONFIG_FILE)
        return
    configs = sorted(path.glob(f"*/{cache_format.CONFIG_FILE}"))
    if not configs:
        raise UserError(
            f"cache artifact {path}: no <hookpoint>/config.json (an unfinished or empty cache)"
        )
    for config in configs:
        _check_cache_config(config)


def _check_cache_config(config_path: Path, with_files: bool = True) -> None:
    data = _read_json(config_path)
    check("cache", data, str(config_path))
    if data["hookpoint"] != config_path.parent.name:
        raise UserError(
            f"{config_path}: hookpoint {data['hookpoint']!r} does not match its folder "
            f"{config_path.parent.name!r}"
        )
    tokens = cache_format.TOKENS_FILE
    if with_files and not (config_path.parent / tokens).exists():
        raise UserError(f"{config_path.parent}: {tokens} is missing")
    shards = data["shards"]
    if isinstance(shards, list):
        # The ranges must tile [0, num_latents) in order, so every latent has one shard.
        expected = 0
        for shard in shards:
            if shard["start"] != expected or shard["end"] <= shard["start"]:
                raise UserError(
                    f"{config_path}: shard {shard['file']} covers [{shard['start']}, "
                    f"{shard['end']}) but the next range should start at {expected}"
                )
            expected = shard["end"]
        if expected != data["num_latents"]:
            raise UserError(
                f"{config_path}: shards cover latents up to {expected}, "
                f"not num_latents={data['num_latents']}"
            )


def _latent_files(folder: Path, ext: str) -> list[tuple[Path, str, int]]:
    return list(layout.latent_files(folder, ext))


def _check_names(file: Path, data: dict[str, Any], hookpoint: str, latent: int) -> None:
    if data.get("hookpoint") != hookpoint or data.get("latent") != latent:
        raise UserError(
            f"{file}: holds {data.get('hookpoint')!r} latent {data.get('latent')!r}, "
            f"but its name says {hookpoint!r} latent {latent}"
        )


def _validate_examples(path: Path) -> None:
    if path.is_file():
        files = [(path, *_name_parts(path))] if path.name != layout.SKIPPED else []
        folder = path.parent
    else:
        files = _latent_files(path, layout.EXAMPLE_EXT)
        folder = path
        if not files and not layout.skipped_file(folder).exists():
            raise UserError(
                f"examples artifact {path}: no <hookpoint>_latent_<id>.json and no {layout.SKIPPED}"
            )
    for file, hookpoint, latent in files:
        data = _read_json(file)
        check("examples", data, str(file))
        _check_names(file, data, hookpoint, latent)
    skipped = layout.skipped_file(folder)
    if skipped.exists() and (path.is_dir() or path == skipped):
        check("skipped", _read_json(skipped), str(skipped))


def _name_parts(file: Path) -> tuple[str, int]:
    key = layout.parse_stem(file.stem)
    if key is None:
        raise UserError(f"{file}: name is not <hookpoint>_latent_<id>.{file.suffix.lstrip('.')}")
    return key


def _validate_explanations(path: Path) -> None:
    if path.is_file():
        files = [(path, *_name_parts(path))]
    else:
        files = _latent_files(path, layout.EXPLANATION_EXT)
    for file, hookpoint, latent in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{file}: not readable UTF-8 text ({exc})") from None
        record = {"file": file.name, "hookpoint": hookpoint, "latent": latent, "explanation": text}
        check("explanation", record, str(file))
        side = layout.explanation_provenance_file(file.parent, hookpoint, latent)
        if side.exists():
            data = _read_json(side)
            check("provenance", data, str(side))
            _check_names(side, data, hookpoint, latent)


def _validate_scores(path: Path) -> None:
    if path.is_file():
        files = [(path, *_name_parts(path))]
    else:
        subs = layout.scorer_dirs(path) + layout.null_scorer_dirs(path)  # nulls: same format
        files = [f for sub in subs for f in _latent_files(sub, layout.SCORE_EXT)]
    for file, hookpoint, latent in files:
        data = _read_json(file)
        check("score", data, str(file))
        _check_names(file, data, hookpoint, latent)
        if path.is_dir() and data["scorer"] != file.parent.name:
            raise UserError(
                f"{file}: scorer {data['scorer']!r} does not match its folder {file.parent.name!r}"
            )


def _validate_summary(path: Path) -> None:
    file = path if path.is_file() else path / layout.SUMMARY
    if not file.exists():
        raise UserError(f"summary artifact {path}: {layout.SUMMARY} is missing")
    check("summary", _read_json(file), str(file))


def _validate_output(path: Path) -> None:
    """Output profiles (issue 13); an empty folder is valid (a run that uses none)."""
    if path.is_file():
        files = [(path, *_name_parts(path))]
    else:
        files = _latent_files(path, layout.OUTPUT_EXT)
    for file, hookpoint, latent in files:
        data = _read_json(file)
        check("output", data, str(file))
        _check_names(file, data, hookpoint, latent)
