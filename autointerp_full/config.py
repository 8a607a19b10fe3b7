"""Every run parameter, its default and its help text, defined once.

The CLI flags (cli.py) and the Kubeflow pipeline parameters (pipelines/) are
both generated from RunConfig, so a name or default is never written twice.
This module must stay import-light: `--help` must not pull in torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

PROVIDERS = ("offline", "openrouter", "vllm")
EXPLAINERS = ("default", "single_token", "contrastive", "np_max_act", "cot", "output", "none")
SCORERS = (
    "detection",
    "fuzz",
    "simulation",
    "surprisal",
    "embedding",
    "intruder",
    "intervention",
    "output_detection",
)
NON_ACTIVATING_SOURCES = ("random", "neighbours", "FAISS")
NEIGHBOURS_TYPES = ("co-occurrence", "decoder_similarity", "encoder_similarity")
NULL_BASELINES = ("shuffled", "none")
OVERWRITE_CHOICES = ("cache", "neighbours", "examples", "explanations", "scores")
OPENROUTER_URL = "https://openrouter.ai/api/v1"

# Fields that decide the content of an activation cache (see cache/).
CACHE_KEY_FIELDS = (
    "model",
    "sparse_model",
    "dataset_repo",
    "dataset_split",
    "dataset_column",
    "n_tokens",
    "cache_ctx_len",
    "batch_size",
    "filter_bos",
    "dtype",
    "load_in_8bit",
    "sparse_weights",  # a property: "trained", or the seed of --random_sparse_model's weights
)

# Never persisted: run_config.json, logs and pipeline specs leave these out.
SECRET_FIELDS = ("hf_token",)


def _opt(default: Any, help: str, group: str, **cli: Any) -> Any:
    """A dataclass field carrying its CLI metadata."""
    meta = {"help": help, "group": group, **cli}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


def default_num_proc() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass
class RunConfig:
    # Core model parameters
    model: str = _opt(
        "meta-llama/Meta-Llama-3-8B",
        "Subject model: a hub id, a local directory, or a local .gguf file.",
        "core",
        positional=True,
    )
    sparse_model: str = _opt(
        "EleutherAI/sae-llama-3-8b-32x",
        "Sparse model (SAE or transcoder): a local directory or hub repo in sparsify, "
        "SAELens or Gemma Scope layout.",
        "core",
        positional=True,
    )
    random_sparse_model: bool = _opt(
        False,
        "Randomised control (Heap et al. 2025): replace the sparse model's weights by random "
        "ones of the same architecture and shapes, seeded by --seed and the hookpoint. Every "
        "encoder and decoder row becomes a random direction with the real row's norm; "
        "thresholds, k and input normalisation are kept, and the encoder biases are set so "
        "that each latent fires as often as the real one on the first 8192 cached tokens. "
        "The cache is keyed apart from the real model's. Compare its scores with a run on "
        "the real weights.",
        "core",
    )
    hookpoints: list[str] = _opt(
        [], "Module paths to analyse, e.g. layers.16 or layers.16.mlp.", "core", nargs="+"
    )
    max_latents: int | None = _opt(
        None, "Analyse latents 0..N-1 (default: all).", "core", type=int, min=1
    )
    feature_num: list[int] | None = _opt(
        None, "Analyse exactly these latent indices.", "core", nargs="+", type=int, min=0
    )
    name: str = _opt("", "Run name; results go to results/<name>/.", "core")
    results_dir: str = _opt("results", "Folder that holds the run folders.", "core")

    # Explainer parameters
    explainer_model: str = _opt(
        "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
        "LLM that writes explanations and answers the scorers.",
        "explainer",
    )
    explainer_model_max_len: int = _opt(
        5120, "Maximum context length of the explainer model.", "explainer", type=int, min=64
    )
    explainer_provider: str = _opt(
        "offline", "Where the explainer runs.", "explainer", choices=PROVIDERS
    )
    explainer_api_base_url: str | None = _opt(
        None,
        "Base URL of an OpenAI-compatible API (vllm, openrouter), e.g. http://localhost:8002/v1.",
        "explainer",
    )
    explainer: str = _opt(
        "default",
        "Explanation strategy. With --non_activating_source FAISS the default becomes contrastive.",
        "explainer",
        choices=EXPLAINERS,
    )
    max_concurrent_requests: int = _opt(
        32, "LLM requests kept in flight at once.", "explainer", type=int, min=1
    )
    request_timeout: float = _opt(
        120.0, "Seconds before one LLM request times out.", "explainer", type=float, min=0.001
    )
    max_retries: int = _opt(
        5, "Retries of an LLM request on timeout, 429 or 5xx.", "explainer", type=int, min=0
    )
    offline_batch_size: int = _opt(
        16, "Prompts per batch for the offline transformers provider.", "explainer", type=int, min=1
    )

    # Prompt customisation
    prompt_override: bool = _opt(False, "Load prompts from a YAML file.", "prompts")
    prompt_config_file: str | None = _opt(
        None,
        "YAML file of prompts (default: ./prompts.yaml, then $PROMPT_CONFIG_FILE).",
        "prompts",
    )

    # Scoring parameters
    scorers: list[str] = _opt(
        ["fuzz", "detection"], "Scorers to run.", "scoring", nargs="+", choices=SCORERS
    )
    num_examples_per_scorer_prompt: int = _opt(
        5, "Examples shown in one scorer prompt.", "scoring", type=int, min=1
    )
    answer_retries: int = _opt(
        2,
        "Times an LLM answer that cannot be read (no explanation marker, cut off at the token "
        "limit, not a list of the right length) is asked again before it counts as failed. "
        "Failed answers are left out of every metric and counted.",
        "scoring",
        type=int,
        min=0,
    )
    null_baseline: str = _opt(
        "shuffled",
        "Null baseline: shuffled also scores every latent with another latent's explanation "
        "(a derangement fixed by --seed) on the same examples, so each score is shown next to "
        "its chance level, with their difference and 95% intervals. It adds scorer requests "
        "only (no explanations); the count is logged before the LLM stages. none: off.",
        "scoring",
        choices=NULL_BASELINES,
    )
    highlight_threshold: float = _opt(
        0.3,
        "Tokens whose activation reaches this fraction of the strongest activation in their "
        "example are marked <<like this>>, in explainer and scorer prompts alike (one rule).",
        "scoring",
        type=float,
        min=0.0,
    )

    # Dataset and caching parameters
    dataset_repo: str = _opt(
        "EleutherAI/SmolLM2-135M-10B",
        "Text dataset: a hub id, or a local file or folder (txt, jsonl, json, parquet).",
        "dataset",
    )
    dataset_split: str = _opt("train[:1%]", "Split, with optional slicing.", "dataset")
    dataset_column: str = _opt("text", "Column holding the text.", "dataset")
    n_tokens: int = _opt(10_000_000, "Tokens to cache.", "dataset", type=int, min=1)
    batch_size: int = _opt(32, "Sequences per forward batch.", "dataset", type=int, min=1)
    cache_ctx_len: int = _opt(256, "Tokens per cached sequence.", "dataset", type=int, min=2)
    n_splits: int = _opt(
        5, "Safetensors shards per hookpoint, split by latent range.", "dataset", type=int, min=1
    )

    # Example construction parameters
    min_examples: int = _opt(
        200, "Skip latents with fewer activating windows.", "examples", type=int, min=1
    )
    n_examples_train: int = _opt(
        40, "Activating windows shown to the explainer.", "examples", type=int, min=1
    )
    n_examples_test: int = _opt(
        50, "Activating windows held out for scoring.", "examples", type=int, min=1
    )
    n_non_activating: int = _opt(
        50, "Non-activating windows for scoring and contrast.", "examples", type=int, min=0
    )
    example_ctx_len: int = _opt(32, "Tokens per example window.", "examples", type=int, min=1)
    center_examples: bool = _opt(
        True, "Centre each window on its strongest activation.", "examples"
    )
    non_activating_source: str = _opt(
        "random",
        "Where non-activating windows come from.",
        "examples",
        choices=NON_ACTIVATING_SOURCES,
    )
    neighbours_type: str = _opt(
        "co-occurrence",
        "Similarity used by the neighbours source.",
        "examples",
        choices=NEIGHBOURS_TYPES,
    )
    faiss_embedding_model: str = _opt(
        "sentence-transformers/all-MiniLM-L6-v2",
        "Sentence-embedding model for FAISS hard negatives and the embedding scorer.",
        "examples",
    )

    # Technical parameters
    pipeline_num_proc: int = _opt(
        default_num_proc(), "CPU processes for data processing.", "technical", type=int, min=1
    )
    num_gpus: int | None = _opt(
        None,
        "GPUs for inference (default: every visible GPU); the vLLM tensor-parallel size.",
        "technical",
        type=int,
        min=0,
    )
    device: str = _opt(
        "auto", "Device for the subject model: auto, cpu, cuda, cuda:N.", "technical"
    )
    dtype: str = _opt(
        "auto",
        "Subject-model dtype: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.",
        "technical",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    seed: int = _opt(22, "Random seed for every random choice.", "technical", type=int)
    verbose: bool = _opt(True, "Detailed logging.", "technical")
    filter_bos: bool = _opt(False, "Drop activations on beginning-of-sequence tokens.", "technical")
    log_probs: bool = _opt(False, "Gather log-probabilities from the LLM.", "technical")
    structured_output: str = _opt(
        "auto",
        "Hold LLM answers (scorers, explainer) to their prompt's JSON schema: auto (where the "
        "server or engine supports it), on (required; stop if unsupported), off (never).",
        "explainer",
        choices=("auto", "on", "off"),
    )
    load_in_8bit: bool = _opt(False, "Load the subject model in 8 bits (CUDA only).", "technical")
    hf_token: str | None = _opt(
        None, "Hugging Face token (default: $HF_TOKEN). Never saved.", "technical"
    )
    overwrite: list[str] = _opt(
        [], "Recompute these stages' outputs.", "technical", nargs="+", choices=OVERWRITE_CHOICES
    )
    enable_visualization: bool = _opt(
        False, "Write the HTML dashboard under report/ (static files, no extra).", "technical"
    )

    # ----------------------------------------------------------------- helpers
    @property
    def run_name(self) -> str:
        return self.name or "default"

    @property
    def effective_explainer(self) -> str:
        """FAISS hard negatives pair with the contrastive explainer unless one was chosen."""
        if self.non_activating_source == "FAISS" and self.explainer == "default":
            return "contrastive"
        return self.explainer

    @property
    def sparse_weights(self) -> str:
        """Which weights the sparse model runs with, as the cache key records it."""
        return f"random (seed {self.seed})" if self.random_sparse_model else "trained"

    @property
    def random_sparse_seed(self) -> int | None:
        """The seed for sparse.load_sparse_models(random_seed=...): None for trained weights."""
        return self.seed if self.random_sparse_model else None

    @property
    def token(self) -> str | None:
        return self.hf_token or os.environ.get("HF_TOKEN") or None

    def public_dict(self) -> dict[str, Any]:
        """The configuration with secrets removed, for run_config.json and logs."""
        data = dataclasses.asdict(self)
        for key in SECRET_FIELDS:
            data.pop(key, None)
        return data

    def to_json(self) -> str:
        return json.dumps(self.public_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown configuration field(s): {', '.join(unknown)}")
        return cls(**data)

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid parameter."""
        for f in dataclasses.fields(self):
            meta = f.metadata
            value = getattr(self, f.name)
            if value is None:
                continue
            values = value if isinstance(value, list) else [value]
            choices = meta.get("choices")
            if choices:
                for v in values:
                    if v not in choices:
                        raise ConfigError(
                            f.name, f"invalid choice {v!r} (choose from {', '.join(choices)})"
                        )
            low = meta.get("min")
            if low is not None:
                for v in values:
                    if v < low:
                        raise ConfigError(f.name, f"must be >= {low} (got {v})")
        if self.name and ("/" in self.name or self.name in (".", "..")):
            raise ConfigError("name", f"must be a plain folder name (got {self.name!r})")
        if self.explainer_provider in ("vllm",) and not self.explainer_api_base_url:
            raise ConfigError(
                "explainer_api_base_url", "is required with --explainer_provider vllm"
            )
        if self.highlight_threshold > 1:
            raise ConfigError(
                "highlight_threshold", f"must be at most 1 (got {self.highlight_threshold})"
            )
        if self.example_ctx_len > self.cache_ctx_len:
            raise ConfigError(
                "example_ctx_len",
                f"must not exceed --cache_ctx_len ({self.example_ctx_len} > {self.cache_ctx_len})",
            )


class ConfigError(ValueError):
    """An invalid parameter value; `param` is the parameter's name."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"argument --{param}: {message}")
        self.param = param


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(RunConfig))
