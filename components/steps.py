"""The KFP components: one per stage, each a thin wrapper over components.runtime.

Lightweight Python components: KFP embeds each function's source in the pipeline spec and runs
it in our runtime image, which already holds this package (packages_to_install=[]). Imports
therefore live inside the function bodies.
"""

import linecache
from collections.abc import Callable
from typing import Any, List, NamedTuple, Optional  # noqa: UP035 (KFP reads typing.List)

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from autointerp_full import __version__
from components.runtime import promoted_parameters

IMAGE_REPO = "ghcr.io/autointerp-full"
CPU_IMAGE = f"{IMAGE_REPO}/runtime-cpu:{__version__}"
GPU_IMAGE = f"{IMAGE_REPO}/runtime-gpu:{__version__}"


def component(func: Callable[..., Any]) -> Any:
    return dsl.component(func, base_image=CPU_IMAGE, packages_to_install=[])


# ------------------------------------------------------------------- configure
# Its signature is generated from RunConfig (one source of truth for names and types), so its
# source is generated too: KFP embeds a component's source text, which the generated text is.
_CONFIGURE_TEMPLATE = '''\
def configure(config_json: str, serve_in_step: bool, {params}) -> str:
    """Merge the top-level parameters into config_json and validate the result."""
    overrides = dict(locals())  # first statement: exactly the parameters
    from components.runtime import run_configure

    overrides.pop("config_json")
    overrides.pop("serve_in_step")
    return run_configure(config_json, overrides, serve_in_step)
'''


def _generated_function(name: str, source: str) -> Callable[..., Any]:
    # Registering the text in linecache lets inspect.getsource (used by KFP) find it.
    filename = f"<autointerp generated {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"NamedTuple": NamedTuple, "Optional": Optional}
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


def _configure_function() -> Callable[..., Any]:
    params = ", ".join(f"{name}: {kind}" for name, kind, _ in promoted_parameters())
    return _generated_function("configure", _CONFIGURE_TEMPLATE.format(params=params))


configure_op = component(_configure_function())


# ---------------------------------------------------------------------- stages
@component
def cache_ranges_op(config: str, cache_ranges: int) -> list:
    """The cache fan-out's work items: {"hookpoint", "config", "rows"} per hookpoint and token
    range (rows [] when cache_ranges is 1: one whole cache per hookpoint)."""
    from components.runtime import run_cache_ranges

    return run_cache_ranges(config, cache_ranges)


@component
def cache_op(config: str, hookpoint: str, rows: list, cache: Output[Dataset]) -> str:
    """Cache one hookpoint's latent activations (only token rows [lo, hi) when `rows` is
    given); returns the artifact URI for ranged reads."""
    from components.runtime import run_cache

    run_cache(config, hookpoint, cache.path, rows)
    cache.metadata["hookpoint"] = hookpoint
    cache.metadata["rows"] = rows
    return cache.uri


@component
def merge_cache_op(
    config: str, part_uris: list, cache_ranges: int, merged: Output[Dataset]
) -> list:
    """Join the cache ranges of each hookpoint into one cache (byte-identical to a single
    step's); returns the cache URIs the plan reads (the parts' own when cache_ranges is 1)."""
    from components.runtime import run_merge_cache

    uris = run_merge_cache(config, part_uris, cache_ranges, merged.path)
    return [merged.uri] if uris is None else uris


@component
def plan_op(config: str, cache_uris: list, shard_size: int) -> list:
    """The latent fan-out's work items: {"latent_range": [start, end), "cache_uris": [...],
    "config": ...}, each range holding at most shard_size selected latents."""
    from components.runtime import run_plan

    return run_plan(config, cache_uris, shard_size)


@component
def examples_op(
    config: str, cache_uris: list, latent_range: list, examples: Output[Dataset]
) -> None:
    """Build the examples of latent_range, reading only the cache shards covering it.

    The caches arrive by URI, not as input artifacts: the KFP launcher would copy each whole
    cache into the pod, while this step needs a few shards of it.
    """
    from components.runtime import run_examples

    examples.metadata.update(run_examples(config, cache_uris, latent_range, examples.path))


@component
def output_op(
    config: str, examples: Input[Dataset], latent_range: list, output: Output[Dataset]
) -> None:
    """Output profiles of latent_range (logit lens, steering), when the output explainer or an
    output-side scorer uses them; otherwise an empty artifact, and no model is loaded."""
    from components.runtime import run_output

    output.metadata.update(
        run_output(config, examples.uri, examples.path, latent_range, output.path)
    )


@component
def explain_op(
    config: str,
    examples: Input[Dataset],
    output: Input[Dataset],
    latent_range: list,
    explanations: Output[Dataset],
    serve_in_step: bool = False,
) -> None:
    """Explain the latents of latent_range with the explainer LLM."""
    from components.runtime import run_explain

    info = run_explain(
        config,
        examples.uri,
        examples.path,
        latent_range,
        explanations.path,
        serve_in_step,
        output.uri,
        output.path,
    )
    explanations.metadata.update(info)


@component
def score_op(
    config: str,
    examples: Input[Dataset],
    explanations: Input[Dataset],
    output: Input[Dataset],
    latent_range: list,
    scores: Output[Dataset],
    serve_in_step: bool = False,
) -> None:
    """Score the explanations of latent_range with every configured scorer."""
    from components.runtime import run_score

    info = run_score(
        config,
        examples.uri,
        examples.path,
        explanations.uri,
        explanations.path,
        latent_range,
        scores.path,
        serve_in_step,
        output.uri,
        output.path,
    )
    scores.metadata.update(info)


@component
def report_op(
    config: str,
    examples: Input[List[Dataset]],  # noqa: UP006
    explanations: Input[List[Dataset]],  # noqa: UP006
    scores: Input[List[Dataset]],  # noqa: UP006
    output: Input[List[Dataset]],  # noqa: UP006
    summary: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
    baseline_uri: str = "",
    update_baseline: bool = False,
) -> None:
    """Gather every shard, write summary.json, log its numbers as metrics, render the report.

    With baseline_uri (where a previous run's latent_scores.json is kept), the metrics and the
    report also compare this run with it; update_baseline makes this run the next baseline."""
    from components.runtime import run_report

    values = run_report(
        config,
        [(a.uri, a.path) for a in examples],
        [(a.uri, a.path) for a in explanations],
        [(a.uri, a.path) for a in scores],
        summary.path,
        report.path,
        baseline_uri,
        update_baseline,
        [(a.uri, a.path) for a in output],
    )
    for name, value in values.items():
        metrics.log_metric(name, value)
