"""What the KFP components do, as plain functions the tests can also call directly.

A component body is a few lines that import one function from here; this module builds the
RunConfig, fetches input artifacts (only the needed objects when they live in S3), checks them
against their schemas, and calls exactly one stage function from autointerp_full.stages.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autointerp_full.config import SECRET_FIELDS, ConfigError, RunConfig
from autointerp_full.errors import UserError

log = logging.getLogger("autointerp_full.components")

# Top-level pipeline parameters, besides config_json: the fields users change on most runs.
# Their types, help and defaults come from RunConfig; a value left empty defers to config_json.
PROMOTED_FIELDS = (
    "model",
    "sparse_model",
    "hookpoints",
    "max_latents",
    "feature_num",
    "n_tokens",
    "explainer_model",
    "explainer_provider",
    "explainer_api_base_url",
    "scorers",
)
# Where the pipeline's defaults differ from the CLI's: on a cluster the explainer is a vLLM server
# (the shared Deployment in manifests/), not a model loaded inside each step.
PIPELINE_DEFAULTS: dict[str, Any] = {"explainer_provider": "vllm"}
# Defaults that depend on the machine that compiles the pipeline; the pod decides them instead.
MACHINE_DEPENDENT_FIELDS = ("pipeline_num_proc",)
# Where explain/score steps find a shared LLM server when config says vllm but gives no URL;
# filled from the autointerp-settings ConfigMap (manifests/).
LLM_URL_ENV = "AUTOINTERP_LLM_BASE_URL"
IN_STEP_PLACEHOLDER_URL = "http://127.0.0.1:1/v1"  # replaced by the step's own server


def pipeline_defaults() -> dict[str, Any]:
    """RunConfig's defaults with the pipeline's differences (no secrets, no machine-dependent)."""
    data = {**RunConfig().public_dict(), **PIPELINE_DEFAULTS}
    for name in MACHINE_DEPENDENT_FIELDS:
        data.pop(name, None)
    return data


def default_config_json() -> str:
    """The pipeline's config_json default, in a stable order."""
    return json.dumps(pipeline_defaults(), sort_keys=True)


_EMPTY = {"str": "", "list": [], "int": 0, "float": 0.0, "bool": False}


def kfp_type(field: dataclasses.Field) -> str:
    """The KFP parameter type of a RunConfig field: str, list, int, float or bool."""
    text = str(field.type)
    if text.startswith("list"):
        return "list"
    base = text.split("|")[0].strip()
    return base if base in ("int", "float", "bool") else "str"


def promoted_parameters() -> list[tuple[str, str, Any]]:
    """(name, KFP type, default) of each top-level parameter.

    The default is the pipeline's default for the field, or an empty value of its type where
    that is None (KFP parameters cannot default to None). A top-level parameter replaces the
    field in config_json only when it differs from this default.
    """
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    defaults = pipeline_defaults()
    out = []
    for name in PROMOTED_FIELDS:
        kind = kfp_type(fields[name])
        default = defaults[name]
        out.append((name, kind, _EMPTY[kind] if default is None else default))
    return out


def resolve_config(config_json: str, overrides: dict[str, Any], serve_in_step: bool = False) -> str:
    """config_json with the changed top-level parameters applied, validated; returned as JSON."""
    try:
        data = json.loads(config_json or "{}")
    except json.JSONDecodeError as exc:
        raise UserError(f"config_json: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError("config_json: must be a JSON object of RunConfig fields")
    secrets = sorted(set(data) & set(SECRET_FIELDS))
    if secrets:
        raise UserError(
            f"config_json: {', '.join(secrets)} must not be a pipeline parameter; "
            "it comes from the autointerp-hf-token Kubernetes Secret"
        )
    defaults = {name: default for name, _, default in promoted_parameters()}
    for name, value in overrides.items():
        if name not in defaults:
            raise UserError(f"{name}: not a top-level pipeline parameter")
        if value is not None and value != defaults[name]:
            data[name] = value
    if data.get("explainer_provider") == "vllm" and not data.get("explainer_api_base_url"):
        data["explainer_api_base_url"] = os.environ.get(LLM_URL_ENV) or None
    cfg = config_from_json(json.dumps(data))
    if serve_in_step and cfg.explainer_provider != "offline":
        # The URL is only known once the step has started its own server.
        url = cfg.explainer_api_base_url or IN_STEP_PLACEHOLDER_URL
        cfg = dataclasses.replace(cfg, explainer_provider="vllm", explainer_api_base_url=url)
    if not cfg.hookpoints:
        raise UserError('hookpoints: give at least one module path, e.g. ["layers.16"]')
    try:
        cfg.validate()
    except ConfigError as exc:
        hint = ""
        if exc.param == "explainer_api_base_url":
            hint = f" (or set {LLM_URL_ENV} through the autointerp-settings ConfigMap)"
        raise UserError(f"{exc}{hint}") from None
    return cfg.to_json()


def config_from_json(config: str) -> RunConfig:
    try:
        data = json.loads(config)
        return RunConfig.from_dict(data)
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        raise UserError(f"config_json: {exc}") from None


def plan_ranges(config: str, num_latents: int, shard_size: int) -> list[list[int]]:
    """Split the selected latents into [start, end) ranges of at most `shard_size` latents."""
    from autointerp_full.layout import select_latents

    if shard_size < 1:
        raise UserError(f"shard_size: must be >= 1 (got {shard_size})")
    latents = select_latents(config_from_json(config), num_latents)
    ranges = []
    for i in range(0, len(latents), shard_size):
        chunk = latents[i : i + shard_size]
        ranges.append([chunk[0], chunk[-1] + 1])
    return ranges


@contextmanager
def scratch_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="autointerp-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _setup() -> None:
    from autointerp_full.logs import setup_logging

    setup_logging(True)


# ------------------------------------------------------------------------- steps


def run_configure(config_json: str, overrides: dict[str, Any], serve_in_step: bool) -> str:
    _setup()
    config = resolve_config(config_json, overrides, serve_in_step)
    log.info("configuration: %s", config)
    return config


def run_cache(config: str, hookpoint: str, cache_path: str, rows: list[int] | None = None) -> None:
    """Cache one hookpoint into `cache_path/<hookpoint>/`; with `rows` = [lo, hi] only those
    token rows (a cache fan-out range: a part that run_merge_cache joins)."""
    from autointerp_full.schemas import validate_artifact
    from autointerp_full.stages import cache_stage

    _setup()
    cfg = dataclasses.replace(config_from_json(config), hookpoints=[hookpoint])
    if rows:
        from autointerp_full.cache import build_cache

        build_cache(cfg, Path(cache_path), rows=(int(rows[0]), int(rows[1])))
    else:
        cache_stage(cfg, Path(cache_path))
    validate_artifact("cache", Path(cache_path) / hookpoint)


# --------------------------------------------------------------------- cache fan-out
def run_cache_ranges(config: str, cache_ranges: int) -> list[dict[str, Any]]:
    """The cache fan-out's work items: {"hookpoint", "config", "rows"} per hookpoint and token
    range; rows [lo, hi] (whole batches), or [] when cache_ranges is 1 (one whole cache)."""
    from autointerp_full.cache.fanout import range_rows

    _setup()
    cfg = config_from_json(config)
    n = int(cache_ranges)
    if n < 1:
        raise UserError(f"cache_ranges: must be at least 1, got {cache_ranges}")
    items = []
    for hookpoint in cfg.hookpoints:
        for k in range(n):
            rows: list[int] = []
            if n > 1:
                rows = list(range_rows(cfg.n_tokens, cfg.cache_ctx_len, cfg.batch_size, k, n))
            items.append({"hookpoint": hookpoint, "config": config, "rows": rows})
    return items


def run_merge_cache(
    config: str, part_uris: list[str], cache_ranges: int, merged_path: str
) -> list[str] | None:
    """Join each hookpoint's range parts into `merged_path/<hookpoint>/`; returns None then.
    With cache_ranges 1 the parts are whole caches: their URIs come back untouched (nothing
    is fetched or copied)."""
    from autointerp_full import s3
    from autointerp_full.cache.fanout import merge_parts
    from autointerp_full.cache.format import CONFIG_FILE
    from autointerp_full.schemas import validate_artifact

    _setup()
    if int(cache_ranges) <= 1:
        return list(part_uris)
    parts: dict[str, list[Path]] = {}
    with scratch_dir() as tmp:
        for i, uri in enumerate(part_uris):
            s3.fetch_cache(uri, tmp / str(i))
            for path in sorted((tmp / str(i)).glob(f"*/{CONFIG_FILE}")):
                parts.setdefault(path.parent.name, []).append(path.parent)
        for hookpoint, folders in parts.items():
            merge_parts(folders, Path(merged_path), hookpoint)
    validate_artifact("cache", Path(merged_path))
    return None


def run_plan(config: str, cache_uris: list[str], shard_size: int) -> list[dict[str, Any]]:
    """The latent fan-out's work items, from the caches' latent counts (config.json only).

    Each item carries the cache URIs and the config too: a task in a loop cannot read the
    output of an earlier loop, and kfp.local mishandles other task outputs fed into a loop.
    """
    from autointerp_full import s3
    from autointerp_full.cache.format import CONFIG_FILE
    from autointerp_full.io import read_json
    from autointerp_full.schemas import validate_artifact

    _setup()
    with scratch_dir() as tmp:
        counts = []
        for i, uri in enumerate(cache_uris):
            if s3.is_remote(uri):
                names = [n for n in s3.list_objects(uri) if n.count("/") == 1
                         and n.endswith(f"/{CONFIG_FILE}")]  # fmt: skip
                s3.download_objects(uri, names, tmp / str(i))
                configs = [tmp / str(i) / n for n in names]
            else:
                configs = sorted(Path(uri).glob(f"*/{CONFIG_FILE}"))
            for path in configs:
                validate_artifact("cache", path)
                counts.append(int(read_json(path)["num_latents"]))
    if not counts:
        raise UserError("plan: the cache artifacts hold no hookpoint config.json")
    ranges = plan_ranges(config, max(counts), shard_size)
    log.info("%d latent ranges of up to %d latents: %s", len(ranges), shard_size, ranges)
    return [{"latent_range": r, "cache_uris": list(cache_uris), "config": config} for r in ranges]


def run_examples(
    config: str, cache_uris: list[str], latent_range: list[int], examples_path: str
) -> dict[str, Any]:
    """Fetch the cache shards covering `latent_range` from every hookpoint's cache and build
    the examples of those latents."""
    from autointerp_full import layout, s3
    from autointerp_full.schemas import validate_artifact
    from autointerp_full.stages import examples_stage

    _setup()
    cfg = config_from_json(config)
    start, end = _range(latent_range)
    # Co-occurrence neighbours compare every latent, so that source needs every shard.
    wanted = None if cfg.non_activating_source == "neighbours" else (start, end)
    with scratch_dir() as tmp:
        latents_dir = tmp / layout.LATENTS
        fetched = []
        for uri in cache_uris:
            fetched += s3.fetch_cache(uri, latents_dir, wanted)
        validate_artifact("cache", latents_dir)
        examples_stage(cfg, latents_dir, Path(examples_path), (start, end))
    validate_artifact("examples", Path(examples_path))
    built = len(list(layout.latent_files(Path(examples_path), layout.EXAMPLE_EXT)))
    return {"latent_range": [start, end], "latents_built": built, "objects_fetched": len(fetched)}


@contextmanager
def llm_config(cfg: RunConfig, serve_in_step: bool) -> Iterator[RunConfig]:
    """The config the LLM stages use: as given, or pointed at a vLLM server this step starts."""
    if not serve_in_step or cfg.explainer_provider == "offline":
        yield cfg
        return
    from autointerp_full.vllm_server import VLLMServer

    with VLLMServer(
        cfg.explainer_model,
        tensor_parallel_size=cfg.num_gpus or None,
        max_model_len=cfg.explainer_model_max_len,
    ) as server:
        yield dataclasses.replace(
            cfg, explainer_provider="vllm", explainer_api_base_url=server.base_url
        )


def run_output(
    config: str, examples_uri: str, examples_path: str, latent_range: list[int], output_path: str
) -> dict[str, Any]:
    """Output profiles of latent_range (issue 13): only when the run's explainer or scorers use
    them; otherwise the artifact stays empty and no model is loaded."""
    from autointerp_full import layout, s3
    from autointerp_full.schemas import validate_artifact
    from autointerp_full.stages import output_stage

    _setup()
    cfg = config_from_json(config)
    with scratch_dir() as tmp:
        examples = s3.ensure_local(examples_uri, examples_path, tmp)
        validate_artifact("examples", examples)
        output_stage(cfg, examples, Path(output_path), _range(latent_range))
    Path(output_path).mkdir(parents=True, exist_ok=True)
    validate_artifact("output", Path(output_path))
    found = layout.latent_files(Path(output_path), layout.OUTPUT_EXT)
    return {"profiles": len(list(found))}


def run_explain(
    config: str,
    examples_uri: str,
    examples_path: str,
    latent_range: list[int],
    explanations_path: str,
    serve_in_step: bool,
    output_uri: str = "",
    output_path: str = "",
) -> dict[str, Any]:
    """`output_uri`/`output_path`: the output step's profiles, read by the output explainer."""
    from autointerp_full import layout, s3
    from autointerp_full.schemas import validate_artifact
    from autointerp_full.stages import explain_stage

    _setup()
    cfg = config_from_json(config)
    with scratch_dir() as tmp:
        examples = s3.ensure_local(examples_uri, examples_path, tmp)
        validate_artifact("examples", examples)
        profiles = None
        if output_uri or output_path:
            profiles = s3.ensure_local(output_uri, output_path, tmp / "output")
            validate_artifact("output", profiles)
        with llm_config(cfg, serve_in_step) as run_cfg:
            explain_stage(run_cfg, examples, Path(explanations_path), _range(latent_range),
                          output_dir=profiles)  # fmt: skip
    validate_artifact("explanations", Path(explanations_path))
    found = layout.latent_files(Path(explanations_path), layout.EXPLANATION_EXT)
    return {"explanations": len(list(found))}


def run_score(
    config: str,
    examples_uri: str,
    examples_path: str,
    explanations_uri: str,
    explanations_path: str,
    latent_range: list[int],
    scores_path: str,
    serve_in_step: bool,
    output_uri: str = "",
    output_path: str = "",
) -> dict[str, Any]:
    """`output_uri`/`output_path`: the output profiles, which the output explainer's
    explanations are checked against."""
    from autointerp_full import layout, s3
    from autointerp_full.schemas import validate_artifact
    from autointerp_full.stages import score_stage

    _setup()
    cfg = config_from_json(config)
    with scratch_dir() as tmp:
        examples = s3.ensure_local(examples_uri, examples_path, tmp / "e")
        explanations = s3.ensure_local(explanations_uri, explanations_path, tmp / "x")
        validate_artifact("examples", examples)
        validate_artifact("explanations", explanations)
        profiles = None
        if output_uri or output_path:
            profiles = s3.ensure_local(output_uri, output_path, tmp / "o")
            validate_artifact("output", profiles)
        with llm_config(cfg, serve_in_step) as run_cfg:
            score_stage(run_cfg, examples, explanations, Path(scores_path), _range(latent_range),
                        output_dir=profiles)  # fmt: skip
    validate_artifact("scores", Path(scores_path))
    n = sum(
        len(list(layout.latent_files(folder, layout.SCORE_EXT)))
        for folder in layout.scorer_dirs(Path(scores_path))
    )
    return {"score_files": n}


def _range(latent_range: list[int]) -> tuple[int, int]:
    start, end = latent_range
    return int(start), int(end)


# ------------------------------------------------------------------------ report


def _add_numbers(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Usage totals: numbers add, nested counters merge."""
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(a.get(key), dict):
            _add_numbers(a[key], value)
        elif isinstance(value, (int, float)) and isinstance(a.get(key), (int, float)):
            a[key] = a[key] + value
        else:
            a[key] = value
    return a


def _merge_skipped(a: dict[str, Any], b: dict[str, Any], where: Path) -> dict[str, Any]:
    """The examples index: each shard built its own latents with the same fingerprint."""
    for hookpoint, entry in b.items():
        mine = a.get(hookpoint)
        if not isinstance(mine, dict):
            a[hookpoint] = entry
            continue
        if mine.get("fingerprint") != entry.get("fingerprint"):
            raise UserError(
                f"{where}: the shards' examples of {hookpoint} were built under different "
                "configurations (their fingerprints differ)"
            )
        mine["skipped"] = {**mine.get("skipped", {}), **entry.get("skipped", {})}
    return a


def _merge_json(target: Path, source: Path) -> None:
    """Merge one shard's bookkeeping file into the assembled one."""
    from autointerp_full import layout
    from autointerp_full.io import atomic_write_json, read_json

    merged = read_json(target) if target.exists() else {}
    incoming = read_json(source)
    if target.name == layout.USAGE:
        merged = _add_numbers(merged, incoming)
    elif target.name == layout.SKIPPED:
        merged = _merge_skipped(merged, incoming, source)
    else:  # failures: {stem: message}, each latent in one shard
        merged.update(incoming)
    atomic_write_json(target, merged)


def assemble(parts: list[Path], target: Path) -> None:
    """Link the files of several shard artifacts into one folder, merging bookkeeping JSON."""
    from autointerp_full import layout

    target.mkdir(parents=True, exist_ok=True)
    for part in parts:
        for file in sorted(p for p in part.rglob("*") if p.is_file()):
            rel = file.relative_to(part)
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if file.name in layout.BOOKKEEPING and file.parent == part:
                _merge_json(dest, file)
            elif not dest.exists():
                dest.symlink_to(file.resolve())


def flatten_metrics(data: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of summary.json as dotted names (booleans and non-finite values left out)."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten_metrics(value, f"{prefix}{key}."))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        if math.isfinite(data):
            out[prefix.rstrip(".")] = float(data)
    return out


def metrics_html(summary: dict[str, Any], cfg: RunConfig) -> str:
    """A small self-contained HTML page of the run's metrics, for the KFP UI's HTML viewer."""
    from html import escape

    rows = "\n".join(
        f"<tr><td>{escape(k)}</td><td>{v:.4g}</td></tr>"
        for k, v in sorted(flatten_metrics(summary).items())
    )
    title = escape(f"AutoInterp report: {cfg.model} / {cfg.sparse_model}")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>body{{font-family:sans-serif}}"
        "td{padding:2px 12px;border-bottom:1px solid #ddd}</style></head>"
        f"<body><h1>{title}</h1><p>hookpoints: {escape(', '.join(cfg.hookpoints))}</p>"
        f"<table><tr><th>metric</th><th>value</th></tr>\n{rows}\n</table></body></html>\n"
    )


def fetch_baseline(baseline_uri: str, scratch: Path) -> Any:
    """The baseline's per-latent scores (compare.RunScores) from a folder or S3 prefix holding
    latent_scores.json, or None where there is none yet (a recurring job's first run)."""
    from autointerp_full import s3
    from autointerp_full.compare import LATENT_SCORES, load_scores

    if s3.is_remote(baseline_uri):
        if LATENT_SCORES not in s3.list_objects(baseline_uri):
            return None
        s3.download_objects(baseline_uri, [LATENT_SCORES], scratch)
        return load_scores(scratch / LATENT_SCORES)
    where = Path(baseline_uri)
    # A latent_scores.json, a folder holding one, or a CLI run folder.
    if (
        where.is_file()
        or (where / LATENT_SCORES).is_file()
        or (where / "run_config.json").is_file()
    ):
        return load_scores(where)
    return None


def publish_baseline(folder: Path, baseline_uri: str) -> None:
    """Make this run the next run's baseline: copy latent_scores.json and summary.json there,
    each replaced atomically (locally) or as a whole object (S3), only once both exist."""
    from autointerp_full import s3
    from autointerp_full.compare import LATENT_SCORES
    from autointerp_full.io import atomic_write

    names = [LATENT_SCORES, "summary.json"]
    with scratch_dir() as tmp:
        for name in names:
            shutil.copy2(folder / name, tmp / name)
        if s3.is_remote(baseline_uri):
            s3.upload_folder(tmp, baseline_uri)
        else:
            for name in names:
                payload = (tmp / name).read_bytes()
                atomic_write(Path(baseline_uri) / name, lambda t, p=payload: t.write_bytes(p))
    log.info("this run is now the baseline at %s", baseline_uri)


def compare_with_baseline(
    run_root: Path, out: Path, baseline_uri: str, scratch: Path
) -> dict[str, Any] | None:
    """Write latent_scores.json into the summary artifact and, with a baseline, the comparison
    (comparison.json beside it); returns the comparison or None."""
    from autointerp_full.compare import LATENT_SCORES, compare, load_scores, write_latent_scores
    from autointerp_full.io import atomic_write_json

    write_latent_scores(run_root, out / LATENT_SCORES)
    if not baseline_uri:
        return None
    baseline = fetch_baseline(baseline_uri, scratch / "baseline")
    if baseline is None:
        log.info("baseline %s holds no %s yet: nothing to compare", baseline_uri, LATENT_SCORES)
        return None
    result = compare(baseline, load_scores(out / LATENT_SCORES))
    atomic_write_json(out / "comparison.json", result)
    log.info("compared with baseline %s: %d latents shared", baseline_uri,
             result["n_shared_latents"])  # fmt: skip
    return result


def _with_section(html: str, section: str) -> str:
    """The page with `section` added at the end of its body."""
    at = html.lower().rfind("</body>")
    return html + section if at < 0 else html[:at] + section + html[at:]


def run_report(
    config: str,
    examples: list[tuple[str, str]],
    explanations: list[tuple[str, str]],
    scores: list[tuple[str, str]],
    summary_path: str,
    html_path: str,
    baseline_uri: str = "",
    update_baseline: bool = False,
    output: list[tuple[str, str]] | None = None,
) -> dict[str, float]:
    """Gather every shard's outputs into one run folder, write summary.json, return metrics.

    Each input is a list of (uri, local path) pairs, one per shard artifact. With
    `baseline_uri` (a folder or S3 prefix holding a previous run's latent_scores.json, e.g.
    the last run of the same recurring job), the metrics and the HTML also hold the comparison
    with it; `update_baseline` then makes this run the baseline there for the next run.
    """
    from autointerp_full import s3
    from autointerp_full.io import atomic_write_text, read_json
    from autointerp_full.layout import RunLayout
    from autointerp_full.schemas import validate_artifact
    from autointerp_full.stages import dump_config, report_stage

    _setup()
    if update_baseline and not baseline_uri:
        raise UserError("update_baseline: needs baseline_uri, the place the baseline is kept")
    cfg = config_from_json(config)
    with scratch_dir() as tmp:
        run = RunLayout(tmp / "run")
        for kind, folder, pairs in (
            ("examples", run.examples, examples),
            ("explanations", run.explanations, explanations),
            ("scores", run.scores, scores),
        ):
            parts = []
            for i, (uri, path) in enumerate(pairs):
                local = s3.ensure_local(uri, path, tmp / "in" / folder.name / str(i))
                validate_artifact(kind, local)
                parts.append(local)
            assemble(parts, folder)
        # The output profiles (issue 13), for the output explainer's check and the latent pages.
        parts = [s3.ensure_local(uri, path, tmp / "in" / run.output.name / str(i))
                 for i, (uri, path) in enumerate(output or [])]  # fmt: skip
        assemble(parts, run.output)
        dump_config(cfg, run.root)
        summary_file = report_stage(cfg, run.root)
        validate_artifact("summary", summary_file)
        out = Path(summary_path)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(summary_file, out / run.summary.name)
        shutil.copy2(run.run_config, out / run.run_config.name)
        summary = read_json(summary_file)
        comparison = compare_with_baseline(run.root, out, baseline_uri, tmp)
        # KFP shows one file: the dashboard's self-contained index where it was written.
        html = next((f for f in (run.report_standalone, run.report_html) if f.exists()), None)
        page = html.read_text(encoding="utf-8") if html else metrics_html(summary, cfg)
        if comparison is not None:
            from autointerp_full.compare import comparison_html

            page = _with_section(page, comparison_html(comparison))
        atomic_write_text(html_path, page)
        if update_baseline and baseline_uri:
            publish_baseline(out, baseline_uri)
    metrics = flatten_metrics(summary)
    if comparison is not None:
        from autointerp_full.compare import comparison_metrics

        metrics.update(flatten_metrics({"baseline": comparison_metrics(comparison)}))
    return metrics
