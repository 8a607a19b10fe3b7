"""The shuffled-explanation null: score each latent with another latent's explanation.

A scorer that rewards explanations for what they say should give a latent's own explanation a
clearly higher score than an explanation of some other latent, on the same examples. The gap
between the two (with its bootstrap interval, see `stats`) is how far a score sits from the
chance level this particular scorer, example mix and explainer produce.

- `shuffled_sources(latents, seed)` assigns to every latent the latent whose explanation it is
  scored with: a derangement (no latent keeps its own), fixed by the seed. Latents are
  deranged within their hookpoint, so the null explanations come from the same sparse model
  and layer; a hookpoint with a single latent is spliced into another hookpoint's cycle. One
  latent in all gets no null (there is no other explanation to give it).
- The second null, a sparse model with random weights, lives in `sparse.randomize_weights`
  (`--random_sparse_model`); it shares `stream_seed`.
- `estimate_null_cost(cfg, n_latents)` counts the extra LLM requests before the run, so the
  CLI can print them: the null repeats every explanation-based scorer once per latent, and
  needs no new explanations.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import RunConfig

LatentKey = tuple[str, int]  # (hookpoint, latent index)

# Scorers that do not read the explanation have no null (intruder picks the odd example out).
NO_EXPLANATION_SCORERS = ("intruder",)
# Scorers that score with local models only: the null costs compute there, not LLM requests.
LOCAL_SCORERS = {
    "surprisal": "scores each latent once more on the subject model (no LLM requests)",
    "embedding": "embeds one more explanation per latent (no LLM requests)",
}
_SINGLETONS = "\x00single-latent hookpoints"


def stream_seed(seed: int, stream: str) -> int:
    """A seed per named stream (a hookpoint), so adding a hookpoint leaves the others alone.
    Both nulls use it: this module's derangements and sparse.randomize_weights."""
    return (int(seed) * 1_000_003 + zlib.crc32(stream.encode("utf-8"))) % (1 << 63)


def derangement(n: int, seed: int) -> np.ndarray:
    """A permutation p of range(n) with p[i] != i for every i, uniform over all such
    permutations (rejection sampling: about e draws), and the same for the same seed."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items (got {n})")
    rng = np.random.default_rng(seed)
    identity = np.arange(n)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == identity):
            return perm


def shuffled_sources(latents: Iterable[LatentKey], seed: int) -> dict[LatentKey, LatentKey]:
    """{latent: the latent whose explanation it is scored with under the null}.

    Every source is another latent, and every latent's explanation is used exactly once (a
    permutation), so the null explanations are the real ones, only misassigned. Deterministic
    for the seed and the set of latents (order does not matter). Pass only latents that have
    an explanation."""
    keys = sorted(set(latents))
    groups: dict[str, list[LatentKey]] = {}
    for key in keys:
        groups.setdefault(key[0], []).append(key)
    sources: dict[LatentKey, LatentKey] = {}
    singletons = []
    for hookpoint in sorted(groups):
        group = groups[hookpoint]
        if len(group) == 1:
            singletons.append(group[0])
            continue
        perm = derangement(len(group), stream_seed(seed, hookpoint))
        sources.update({group[i]: group[int(j)] for i, j in enumerate(perm)})
    if len(singletons) >= 2:
        perm = derangement(len(singletons), stream_seed(seed, _SINGLETONS))
        sources.update({singletons[i]: singletons[int(j)] for i, j in enumerate(perm)})
    elif singletons and sources:
        _splice(sources, singletons[0], seed)
    return sources


def _splice(sources: dict[LatentKey, LatentKey], lone: LatentKey, seed: int) -> None:
    """Put `lone` into an existing cycle: some latent t now gets lone's explanation, and lone
    gets the one t had. Still a permutation, still no fixed points (lone's hookpoint differs)."""
    targets = sorted(sources)
    rng = np.random.default_rng(stream_seed(seed, lone[0]))
    target = targets[int(rng.integers(len(targets)))]
    sources[lone] = sources[target]
    sources[target] = lone


# ------------------------------------------------------------------------------------ cost
def requests_per_latent(scorer: str, n_test: int, n_non_activating: int, per_prompt: int) -> int:
    """LLM requests one scorer makes for one latent on its first try (re-asks of unreadable
    answers come on top), as the scorers batch their examples:

    - detection, fuzz: every test and non-activating example, `per_prompt` to a request;
    - simulation: one request per example, the test examples plus a quarter as many
      non-activating ones;
    - intruder, surprisal, embedding: no LLM requests for the null (see LOCAL_SCORERS)."""
    if scorer in ("detection", "fuzz"):
        return math.ceil((n_test + n_non_activating) / max(1, per_prompt))
    if scorer == "simulation":
        return n_test + min(n_non_activating, math.ceil(n_test / 4))
    # Output side (issue 13): one token-prediction request; steered and unsteered texts of
    # each test window, `per_prompt` to a request (both also run the subject model).
    if scorer == "intervention":
        return 1
    if scorer == "output_detection":
        return math.ceil(2 * n_test / max(1, per_prompt))
    return 0


@dataclass(frozen=True)
class NullCost:
    """Extra work of the shuffled null for `n_latents` latents."""

    n_latents: int
    per_latent: dict[str, int]  # LLM requests per latent, per scorer that gets a null
    local: dict[str, str] = field(default_factory=dict)  # scorers adding local compute only
    skipped: tuple[str, ...] = ()  # scorers without a null

    @property
    def requests(self) -> int:
        return self.n_latents * sum(self.per_latent.values())

    def describe(self) -> str:
        """One line for the log before the run."""
        parts = [f"{name} {n}/latent" for name, n in self.per_latent.items() if n]
        line = (
            f"--null_baseline shuffled: about {self.requests} more LLM requests for "
            f"{self.n_latents} latents ({', '.join(parts) or 'none'}), before re-asks"
        )
        if self.local:
            line += "; " + "; ".join(f"{name}: {what}" for name, what in self.local.items())
        if self.skipped:
            line += f"; no null for {', '.join(self.skipped)} (it does not read explanations)"
        return line


def estimate_null_cost(
    cfg: RunConfig,
    n_latents: int,
    *,
    n_test: int | None = None,
    n_non_activating: int | None = None,
) -> NullCost:
    """The null's extra cost for the configured scorers. Example counts default to the
    configured ones (`n_examples_test`, `n_non_activating`), an upper bound per latent."""
    tests = cfg.n_examples_test if n_test is None else n_test
    nons = cfg.n_non_activating if n_non_activating is None else n_non_activating
    per_prompt = cfg.num_examples_per_scorer_prompt
    per_latent: dict[str, int] = {}
    local: dict[str, str] = {}
    skipped: list[str] = []
    for scorer in dict.fromkeys(cfg.scorers):
        if scorer in NO_EXPLANATION_SCORERS:
            skipped.append(scorer)
        elif scorer in LOCAL_SCORERS:
            local[scorer] = LOCAL_SCORERS[scorer]
        else:
            per_latent[scorer] = requests_per_latent(scorer, tests, nons, per_prompt)
    return NullCost(n_latents, per_latent, local, tuple(skipped))
