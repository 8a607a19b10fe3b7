"""LLM clients. `make_client(cfg, stage)` picks the provider named by --explainer_provider.

Design: one client per stage ("explain", "detection", ...), each with its own Usage keyed by that
stage; `client.with_stage(name)` shares one client's pool and concurrency limit between stages, and
`Usage.merge` totals several clients for summary.json.
"""

from __future__ import annotations

from autointerp_full.config import RunConfig
from autointerp_full.errors import UserError
from autointerp_full.llm.base import (
    Completion,
    LLMClient,
    LLMError,
    StageUsage,
    TokenLogprob,
    Usage,
)

__all__ = [
    "Completion",
    "LLMClient",
    "LLMError",
    "StageUsage",
    "TokenLogprob",
    "Usage",
    "check_llm",
    "make_client",
]


def make_client(cfg: RunConfig, stage: str, *, check: bool = True) -> LLMClient:
    """Build the client for `stage`. API providers check /v1/models first (fail fast on a dead
    server or a model it does not serve) unless `check` is False; with --structured_output on,
    a provider that cannot constrain answers to a schema is a UserError here too."""
    provider = cfg.explainer_provider
    if provider in ("vllm", "openrouter"):
        from autointerp_full.llm.openai_compat import OpenAICompatClient

        client = OpenAICompatClient.from_config(cfg, stage)
        if check:
            client.check_models()
            if cfg.structured_output == "on":  # stop before any work if it cannot be honoured
                client.check_structured_output()
        return client
    if provider == "offline":
        from autointerp_full.llm.offline import OfflineClient

        offline = OfflineClient(cfg, stage)
        if check and cfg.structured_output == "on":
            offline.structured_mode()  # the transformers engine cannot constrain: UserError
        return offline
    raise UserError(f"--explainer_provider: unknown provider {provider!r}")


def check_llm(cfg: RunConfig) -> None:
    """Fail fast, before any work, with a one-line UserError: a remote provider's server must
    answer, serve --explainer_model and have its API key; an offline --explainer_model must
    exist (a local file or folder) or have a config that loads (a hub id). Loads no weights."""
    if cfg.explainer_provider in ("vllm", "openrouter"):
        from autointerp_full.llm.openai_compat import OpenAICompatClient

        OpenAICompatClient.from_config(cfg, "check").check_models()
    elif cfg.explainer_provider == "offline":
        from autointerp_full.models import check_model_source

        check_model_source(cfg.explainer_model, token=cfg.token, param="explainer_model")
    else:
        raise UserError(f"--explainer_provider: unknown provider {cfg.explainer_provider!r}")
