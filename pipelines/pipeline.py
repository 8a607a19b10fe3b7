"""The AutoInterp pipeline: configure -> cache per hookpoint and token range -> merge ranges ->
plan -> per latent range
(examples -> explain -> score) -> report (compared with `baseline_uri` when given).

Parameters are generated from RunConfig: `config_json` (every field, RunConfig's defaults) and a
few top-level parameters (components.runtime.PROMOTED_FIELDS) that replace the same key of
config_json when changed from their defaults. Secrets never pass as parameters: they come
from Kubernetes Secrets.
"""

import inspect
from dataclasses import dataclass
from typing import Any

from kfp import dsl, kubernetes

from components.runtime import LLM_URL_ENV, default_config_json, promoted_parameters
from components.steps import (
    CPU_IMAGE,
    GPU_IMAGE,
    cache_op,
    cache_ranges_op,
    configure_op,
    examples_op,
    explain_op,
    merge_cache_op,
    output_op,
    plan_op,
    report_op,
    score_op,
)

PIPELINE_NAME = "autointerp-full"
DEFAULT_SHARD_SIZE = 64

# Names of the Kubernetes objects the steps read (manifests/ creates them).
SETTINGS_CONFIG_MAP = "autointerp-settings"
HF_TOKEN_SECRET = "autointerp-hf-token"
LLM_API_KEY_SECRET = "autointerp-llm-api-key"
S3_SECRET = "autointerp-s3-credentials"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")


@dataclass(frozen=True)
class BuildOptions:
    """Choices fixed when the pipeline is compiled (the rest are run parameters)."""

    cpu_image: str = CPU_IMAGE
    gpu_image: str = GPU_IMAGE
    serve_in_step: bool = False  # True: explain/score start their own vLLM server on a GPU
    max_parallel: int = 8  # tasks of one fan-out running at once
    gpus_per_step: int = 1


def _with_s3_env(task: Any) -> None:
    """Credentials and endpoint for the steps' own S3 reads (boto3's standard variables)."""
    kubernetes.use_secret_as_env(
        task,
        S3_SECRET,
        {key: key for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
        optional=True,
    )
    kubernetes.use_config_map_as_env(
        task,
        SETTINGS_CONFIG_MAP,
        {"s3_endpoint_url": "AWS_ENDPOINT_URL_S3", "s3_region": "AWS_DEFAULT_REGION"},
        optional=True,
    )


def _on_gpu(task: Any, opts: BuildOptions) -> None:
    task.set_container_image(opts.gpu_image)
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(opts.gpus_per_step)
    kubernetes.add_node_selector(task, label_key=GPU_NODE_LABEL[0], label_value=GPU_NODE_LABEL[1])
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    # NCCL and vLLM workers share tensors through /dev/shm, which is 64 MiB by default.
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")


def _hf_token(task: Any) -> None:
    kubernetes.use_secret_as_env(task, HF_TOKEN_SECRET, {"HF_TOKEN": "HF_TOKEN"}, optional=True)


def _llm_step(task: Any, opts: BuildOptions, name: str) -> None:
    task.set_display_name(name)
    # Not cached: the answers depend on the server behind the URL, which the inputs don't show.
    task.set_caching_options(False)
    task.set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2.0,
                   backoff_max_duration="600s")  # fmt: skip
    kubernetes.use_secret_as_env(
        task,
        LLM_API_KEY_SECRET,
        {"OPENAI_API_KEY": "OPENAI_API_KEY", "OPENROUTER_API_KEY": "OPENROUTER_API_KEY"},
        optional=True,
    )
    _with_s3_env(task)
    if opts.serve_in_step:
        _on_gpu(task, opts)
        _hf_token(task)
        task.set_memory_request("32G")
    else:
        task.set_cpu_request("1").set_memory_request("2G")


def build_pipeline(opts: BuildOptions = BuildOptions()) -> Any:  # noqa: B008 (frozen)
    """The pipeline as a KFP graph component, ready for Compiler().compile or kfp.local."""
    promoted = promoted_parameters()

    def body(*args: Any) -> None:
        p = dict(zip(names, args, strict=True))
        conf = configure_op(
            config_json=p["config_json"],
            serve_in_step=opts.serve_in_step,
            **{name: p[name] for name, _, _ in promoted},
        ).set_display_name("configure")
        # Not cached: it reads the LLM URL from the ConfigMap, which its inputs don't show.
        conf.set_caching_options(False)
        kubernetes.use_config_map_as_env(
            conf, SETTINGS_CONFIG_MAP, {"llm_base_url": LLM_URL_ENV}, optional=True
        )
        config = conf.output
        ranges = cache_ranges_op(config=config, cache_ranges=p["cache_ranges"])
        ranges.set_display_name("cache ranges")

        # Tasks in a loop take their inputs from the loop item, which carries the config
        # (kfp.local substitutes the loop item for any other task output fed into a loop).
        # One task per hookpoint and token range: each caches and uploads only its own rows.
        with dsl.ParallelFor(ranges.output, parallelism=opts.max_parallel) as item:
            cache = cache_op(config=item.config, hookpoint=item.hookpoint, rows=item.rows)
            cache.set_display_name("cache")
            # Cached: the output is a function of the inputs (model, data, seed, rows, ...).
            cache.set_caching_options(True)
            # Each range is its own task, so a failed range is retried alone.
            cache.set_retry(num_retries=2, backoff_duration="60s")
            cache.set_cpu_request("4").set_memory_request("32G")
            _on_gpu(cache, opts)
            _hf_token(cache)

        merge = merge_cache_op(
            config=config,
            part_uris=dsl.Collected(cache.outputs["Output"]),
            cache_ranges=p["cache_ranges"],
        )
        merge.set_display_name("merge cache ranges")
        merge.set_caching_options(True)
        merge.set_cpu_request("2").set_memory_request("8G")
        _with_s3_env(merge)

        cache_uris = merge.outputs["Output"]
        plan = plan_op(config=config, cache_uris=cache_uris, shard_size=p["shard_size"])
        plan.set_display_name("plan latent ranges")
        plan.set_caching_options(True)
        _with_s3_env(plan)

        with dsl.ParallelFor(plan.output, parallelism=opts.max_parallel) as shard:
            ex = examples_op(
                config=shard.config, cache_uris=shard.cache_uris, latent_range=shard.latent_range
            )
            ex.set_display_name("examples")
            ex.set_caching_options(True)
            ex.set_cpu_request("2").set_memory_request("8G")
            _with_s3_env(ex)
            _hf_token(ex)  # the tokenizer may come from a gated repo

            # Output profiles (issue 13): the subject model on a GPU, when the run uses them.
            outp = output_op(
                config=shard.config,
                examples=ex.outputs["examples"],
                latent_range=shard.latent_range,
            )
            outp.set_display_name("output profiles")
            outp.set_caching_options(True)
            outp.set_cpu_request("2").set_memory_request("16G")
            _on_gpu(outp, opts)
            _hf_token(outp)
            _with_s3_env(outp)

            explain = explain_op(
                config=shard.config,
                examples=ex.outputs["examples"],
                output=outp.outputs["output"],
                latent_range=shard.latent_range,
                serve_in_step=opts.serve_in_step,
            )
            _llm_step(explain, opts, "explain")

            score = score_op(
                config=shard.config,
                examples=ex.outputs["examples"],
                explanations=explain.outputs["explanations"],
                output=outp.outputs["output"],
                latent_range=shard.latent_range,
                serve_in_step=opts.serve_in_step,
            )
            _llm_step(score, opts, "score")
            _hf_token(score)  # the output-side and surprisal scorers load the subject model

        report = report_op(
            config=config,
            examples=dsl.Collected(ex.outputs["examples"]),
            explanations=dsl.Collected(explain.outputs["explanations"]),
            scores=dsl.Collected(score.outputs["scores"]),
            output=dsl.Collected(outp.outputs["output"]),
            baseline_uri=p["baseline_uri"],
            update_baseline=p["update_baseline"],
        ).set_display_name("report")
        report.set_caching_options(False)
        _with_s3_env(report)

    # The signature KFP reads: config_json, the promoted RunConfig fields, then shard_size.
    P = inspect.Parameter
    params = [P("config_json", P.POSITIONAL_OR_KEYWORD, default=default_config_json(),
                annotation=str)]  # fmt: skip
    type_of = {"str": str, "int": int, "float": float, "bool": bool, "list": list}
    params += [
        P(name, P.POSITIONAL_OR_KEYWORD, default=default, annotation=type_of[kind])
        for name, kind, default in promoted
    ]
    params.append(
        P("shard_size", P.POSITIONAL_OR_KEYWORD, default=DEFAULT_SHARD_SIZE, annotation=int)
    )
    # Token ranges each hookpoint's cache is split over (one GPU task each, then a merge).
    params.append(P("cache_ranges", P.POSITIONAL_OR_KEYWORD, default=1, annotation=int))
    # A recurring job's baseline: where the previous run's latent_scores.json is kept (a folder
    # or S3 prefix; empty: no comparison); update_baseline makes this run the next baseline.
    params.append(P("baseline_uri", P.POSITIONAL_OR_KEYWORD, default="", annotation=str))
    params.append(P("update_baseline", P.POSITIONAL_OR_KEYWORD, default=False, annotation=bool))
    names = [param.name for param in params]
    body.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    body.__name__ = "autointerp_pipeline"
    body.__doc__ = (
        "Explain and score the latents of a sparse autoencoder or transcoder. config_json holds "
        "every RunConfig field; a top-level parameter changed from its default replaces that field."
    )
    return dsl.pipeline(name=PIPELINE_NAME, description=body.__doc__)(body)


autointerp_pipeline = build_pipeline()
