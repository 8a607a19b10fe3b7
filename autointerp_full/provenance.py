"""Provenance: what produced each derived artifact, so that a rerun recomputes exactly what changed.

Every artifact records `inputs` (the parameters that shape it, and a reference to each upstream
artifact by its fingerprint) and `fingerprint`, the SHA-256 of the canonical JSON of `inputs`:

- examples:     the cache (fingerprint of its config.json, with its key fields) + EXAMPLE_FIELDS;
- explanations: the examples' fingerprint + the effective explainer, its prompt's hash and
                EXPLANATION_FIELDS;
- scores:       the examples' and the explanation's fingerprints, the explanation text's hash,
                the scorer, its prompt's hash and SCORER_FIELDS (+ SCORER_EXTRA_FIELDS).
- null scores:  a score's inputs with the source latent's explanation, plus `null` (kind,
                seed, source latent): see null_score_inputs.

An artifact whose recorded fingerprint equals the one the current configuration gives is reused;
any other is recomputed, and so is everything downstream of it, because the downstream
fingerprint includes it. `changed_fields` names what differs, for the log. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig
    from autointerp_full.prompts import Prompts

log = logging.getLogger(__name__)

# Parameters that shape a latent's examples. Add a new one here and every rerun notices it.
EXAMPLE_FIELDS = (
    "n_examples_train",
    "n_examples_test",
    "n_non_activating",
    "example_ctx_len",
    "center_examples",
    "min_examples",
    "non_activating_source",
    "neighbours_type",
    "faiss_embedding_model",
    "seed",
)
# Fields that shape examples only with one non-activating source: (field it depends on, value).
ONLY_WITH = {
    "neighbours_type": ("non_activating_source", "neighbours"),
    "faiss_embedding_model": ("non_activating_source", "FAISS"),
}
# Explainers whose examples differ from the others': contrastive needs windows the scorers never
# see, np_max_act trains on the strongest windows only.
EXPLAINERS_WITH_OWN_EXAMPLES = ("contrastive", "np_max_act")
# Parameters that shape an explanation, besides the effective explainer and its prompt.
EXPLANATION_FIELDS = ("explainer_model", "explainer_model_max_len", "highlight_threshold")
# Parameters that shape every scorer's result, besides the scorer's name and prompt. The provider
# is here because local models are handed the opening of the answer and remote ones are not.
SCORER_FIELDS = (
    "explainer_model",
    "explainer_provider",
    "num_examples_per_scorer_prompt",
    "log_probs",
    "seed",
    "highlight_threshold",
    "structured_output",
)
# Parameters that shape one scorer only.
SCORER_EXTRA_FIELDS: dict[str, tuple[str, ...]] = {
    "surprisal": ("model", "dtype", "load_in_8bit", "batch_size"),
    "embedding": ("faiss_embedding_model",),
}
# Parts of the cache's config.json left out of the inputs shown for it (the fingerprint still
# covers the whole file): the shard list is long and follows from the key.
CACHE_DETAIL_KEYS = ("shards",)

FINGERPRINT = "fingerprint"
INPUTS = "inputs"
NEW = "new"  # the reason given for an artifact that did not exist before


# ------------------------------------------------------------------------------ reading
def read_json_or_none(path: Path) -> Any:
    """A bookkeeping or provenance file's JSON, or None when it is missing or unreadable (a
    damaged one is logged, then treated as absent: what it vouched for is redone)."""
    from autointerp_full.io import read_json

    path = Path(path)
    if not path.exists():
        return None
    try:
        return read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("unreadable %s (%s): treated as absent", path, exc)
        return None


# ------------------------------------------------------------------------------ hashing
def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(inputs).encode("utf-8")).hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def ref(fp: str | None) -> dict[str, Any]:
    """How a downstream artifact names an upstream one."""
    return {FINGERPRINT: fp}


def stamp(data: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """`data` with its fingerprint and inputs first (so a reader can find them in the head)."""
    rest = {k: v for k, v in data.items() if k not in (FINGERPRINT, INPUTS)}
    return {FINGERPRINT: fingerprint(inputs), INPUTS: inputs, **rest}


def recorded_fingerprint(data: Any) -> str | None:
    value = data.get(FINGERPRINT) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def recorded_inputs(data: Any) -> dict[str, Any] | None:
    value = data.get(INPUTS) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else None


_HEAD_FINGERPRINT = re.compile(rb'^\s*\{\s*"fingerprint"\s*:\s*"([0-9a-f]{64})"')


def peek_fingerprint(path: Path) -> str | None:
    """The fingerprint of a JSON artifact written by `stamp`, from its first bytes only (examples
    files are large, and a rerun checks every one); None when the head does not hold one."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
    except OSError:
        return None
    match = _HEAD_FINGERPRINT.match(head)
    return match.group(1).decode() if match else None


# ------------------------------------------------------------------------ stage inputs
def _fields(cfg: RunConfig, names: Iterable[str]) -> dict[str, Any]:
    out = {}
    for name in names:
        needs = ONLY_WITH.get(name)
        if needs is not None and getattr(cfg, needs[0]) != needs[1]:
            continue
        out[name] = getattr(cfg, name)
    return out


def cache_ref(cache_config: dict[str, Any]) -> dict[str, Any]:
    """The cache as examples name it: the fingerprint of its whole config.json, and its key."""
    shown = {k: v for k, v in cache_config.items() if k not in CACHE_DETAIL_KEYS}
    return {FINGERPRINT: fingerprint(cache_config), INPUTS: shown}


def examples_inputs(cfg: RunConfig, cache: dict[str, Any]) -> dict[str, Any]:
    """`cache` is the cache's ref (cache_ref), the same for every latent of a hookpoint."""
    explainer = cfg.effective_explainer
    return {
        "cache": cache,
        **_fields(cfg, EXAMPLE_FIELDS),
        "explainer": explainer if explainer in EXPLAINERS_WITH_OWN_EXAMPLES else "any other",
    }


def explainer_prompt_key(explainer: str) -> str | None:
    from autointerp_full.explainers import STRATEGIES

    strategy = STRATEGIES.get(explainer)
    return strategy[0] if strategy else None


def prompt_hash(prompts: Prompts, key: str | None) -> str | None:
    return text_hash(prompts.get(key)) if key else None


def explanation_inputs(
    cfg: RunConfig, prompts: Prompts, examples_fp: str | None, output_fp: str | None = None
) -> dict[str, Any]:
    """`output_fp`: the output profile's fingerprint, part of the inputs of the output
    explainer only (other explainers' fingerprints do not name it)."""
    explainer = cfg.effective_explainer
    inputs = {
        "examples": ref(examples_fp),
        "explainer": explainer,
        "explainer_prompt": prompt_hash(prompts, explainer_prompt_key(explainer)),
        **_fields(cfg, EXPLANATION_FIELDS),
    }
    if explainer == "output":
        inputs["output"] = ref(output_fp)
    return inputs


def scorer_fields(scorer: str) -> tuple[str, ...]:
    from autointerp_full.scorers import SCORERS

    own = tuple(getattr(SCORERS.get(scorer), "provenance_fields", ()) or ())
    return SCORER_FIELDS + SCORER_EXTRA_FIELDS.get(scorer, ()) + own


def score_inputs(
    cfg: RunConfig,
    prompts: Prompts,
    scorer: str,
    examples_fp: str | None,
    explanation: Explanation | None,
) -> dict[str, Any]:
    """`explanation` is None for a scorer that needs none (intruder)."""
    from autointerp_full.scorers import SCORERS

    key = getattr(SCORERS.get(scorer), "prompt_key", None)
    return {
        "examples": ref(examples_fp),
        "explanation": None
        if explanation is None
        else {FINGERPRINT: explanation.fingerprint, "text_sha256": text_hash(explanation.text)},
        "scorer": scorer,
        "scorer_prompt": prompt_hash(prompts, key),
        **_fields(cfg, dict.fromkeys(scorer_fields(scorer))),  # dict: each field once
    }


def null_score_inputs(
    cfg: RunConfig,
    prompts: Prompts,
    scorer: str,
    examples_fp: str | None,
    source: tuple[str, int],
    explanation: Explanation,
) -> dict[str, Any]:
    """A null score's inputs (--null_baseline shuffled): a real score's inputs with the
    *source* latent's explanation (its fingerprint and text hash), plus which latent gave it
    and the seed that chose it. So a null is reused, completed or redone by the same rules."""
    inputs = score_inputs(cfg, prompts, scorer, examples_fp, explanation)
    inputs["null"] = {
        "kind": "shuffled",
        "seed": cfg.seed,
        "source": {"hookpoint": source[0], "latent": int(source[1])},
    }
    return inputs


def null_source(data: Any) -> tuple[str, int] | None:
    """The (hookpoint, latent) whose explanation a null score file used, as it records it."""
    null = (recorded_inputs(data) or {}).get("null")
    source = null.get("source") if isinstance(null, dict) else None
    if not isinstance(source, dict):
        return None
    hookpoint, latent = source.get("hookpoint"), source.get("latent")
    if not isinstance(hookpoint, str) or not isinstance(latent, int):
        return None
    return hookpoint, latent


# ------------------------------------------------------------ output profiles (issue 13)
# Parameters that shape a latent's output profile, besides its examples and the profile's own
# settings (autointerp_full.output): the subject model and the sparse model's weights.
OUTPUT_FIELDS = ("model", "sparse_model", "sparse_weights", "dtype", "load_in_8bit")


def output_inputs(cfg: RunConfig, examples_fp: str | None) -> dict[str, Any]:
    from autointerp_full.output import STEER_CONTEXTS, STEER_FACTOR, TOP_TOKENS

    return {
        "examples": ref(examples_fp),
        **_fields(cfg, OUTPUT_FIELDS),
        "top_tokens": TOP_TOKENS,
        "steer_contexts": STEER_CONTEXTS,
        "steer_factor": STEER_FACTOR,
    }


def output_fingerprint(
    cfg: RunConfig, output_dir: Path | None, hookpoint: str, latent: int
) -> str | None:
    """The fingerprint of a latent's output profile where its explanation depends on it (the
    output explainer), else None; None too when there is no profile."""
    from autointerp_full import layout

    if cfg.effective_explainer != "output" or output_dir is None:
        return None
    return peek_fingerprint(layout.output_file(Path(output_dir), hookpoint, latent))


@dataclass(frozen=True)
class Explanation:
    """An explanation's text and the fingerprint recorded beside it (None if none was, or if
    the text is not the one the record vouches for)."""

    text: str
    fingerprint: str | None


TEXT_SHA = "text_sha256"


def explanation_record(hookpoint: str, latent: int, text: str, inputs: dict[str, Any]) -> dict:
    """The provenance file of one explanation: written before the text, it names the text's
    hash, so a kill between the two writes leaves a text nobody vouches for (redone)."""
    return stamp({"hookpoint": hookpoint, "latent": latent, TEXT_SHA: text_hash(text)}, inputs)


def vouched_fingerprint(record: Any, text: str) -> str | None:
    """The recorded fingerprint if `record` vouches for exactly this text, else None."""
    fp = recorded_fingerprint(record)
    if fp is None or record.get(TEXT_SHA) != text_hash(text):
        return None
    return fp


# ------------------------------------------------------------------------- what changed
def changed_fields(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Names of the inputs that differ ('n_examples_test', 'cache.n_tokens', 'examples')."""
    if old is None:
        return ["no fingerprint recorded"]
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            inner_a, inner_b = recorded_inputs(a), recorded_inputs(b)
            if inner_a is not None and inner_b is not None:
                out += [f"{key}.{name}" for name in changed_fields(inner_a, inner_b)] or [key]
                continue
        out.append(key)
    return out


def reason_changed(old_inputs: dict[str, Any] | None, new_inputs: dict[str, Any]) -> str:
    names = changed_fields(old_inputs, new_inputs)
    if names == ["no fingerprint recorded"]:
        return names[0]
    return f"{', '.join(names) or 'fingerprint'} changed"


@dataclass
class Tally:
    """Per stage: how many artifacts were reused and why the others were recomputed."""

    stage: str
    reused: int = 0
    recomputed: Counter[str] = field(default_factory=Counter)

    def reuse(self, n: int = 1) -> None:
        self.reused += n

    def recompute(self, reason: str, n: int = 1) -> None:
        self.recomputed[reason] += n

    @property
    def n_recomputed(self) -> int:
        return sum(self.recomputed.values())

    def line(self) -> str:
        """'examples layers.1: 3 reused, 9 recomputed (n_examples_test changed: 9)'."""
        text = f"{self.stage}: {self.reused} reused, {self.n_recomputed} recomputed"
        if self.recomputed:
            reasons = "; ".join(f"{why}: {n}" for why, n in self.recomputed.most_common())
            text += f" ({reasons})"
        return text

    def log(self) -> None:
        log.info("%s", self.line())


# ----------------------------------------------------------------- the examples' index
SKIPPED = "skipped"


@dataclass
class ExamplesEntry:
    """One hookpoint's entry in examples/skipped.json: the fingerprint and inputs the examples
    stage last built with, and the latents it skipped (latent id -> activating windows found).

    Downstream stages take a hookpoint's current examples fingerprint from here, so an example
    file left over from another configuration is never explained or scored."""

    fingerprint: str | None
    inputs: dict[str, Any] | None
    skipped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {FINGERPRINT: self.fingerprint, INPUTS: self.inputs, SKIPPED: self.skipped}


def read_examples_index(path: Path) -> dict[str, ExamplesEntry]:
    """examples/skipped.json by hookpoint; a file from before fingerprints gives entries with
    fingerprint None, which match nothing."""
    data = read_json_or_none(path)
    if not isinstance(data, dict):
        data = {}
    out = {}
    for hookpoint, value in data.items():
        if isinstance(value, dict) and isinstance(value.get(SKIPPED), dict):
            out[hookpoint] = ExamplesEntry(
                recorded_fingerprint(value),
                recorded_inputs(value),
                {str(k): int(v) for k, v in value[SKIPPED].items()},
            )
        else:
            out[hookpoint] = ExamplesEntry(None, None, {})
    return out


def write_examples_index(path: Path, index: dict[str, ExamplesEntry]) -> None:
    from autointerp_full.io import atomic_write_json

    atomic_write_json(path, {hp: entry.to_dict() for hp, entry in index.items()})
