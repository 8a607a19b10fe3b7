"""The shuffled-explanation null: derangements fixed by a seed, and its cost estimate."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any

import numpy as np
import pytest

from autointerp_full.config import RunConfig
from autointerp_full.nulls import (
    derangement,
    estimate_null_cost,
    requests_per_latent,
    shuffled_sources,
)


def check_null(sources: dict, latents: list) -> None:
    """Every latent gets another latent's explanation, and each explanation is used once."""
    assert set(sources) == set(latents)
    assert all(src != dst for dst, src in sources.items())
    assert sorted(sources.values()) == sorted(latents)


# ------------------------------------------------------------------------------ derangement
@pytest.mark.parametrize("n", [2, 3, 4, 7, 50, 1000])
def test_derangement_has_no_fixed_points(n: int) -> None:
    for seed in range(20):
        perm = derangement(n, seed)
        assert sorted(perm.tolist()) == list(range(n))
        assert not np.any(perm == np.arange(n))


def test_derangement_is_fixed_by_its_seed() -> None:
    assert np.array_equal(derangement(30, 5), derangement(30, 5))
    assert not np.array_equal(derangement(30, 5), derangement(30, 6))


def test_derangement_is_uniform_over_derangements() -> None:
    """n = 4 has 9 derangements; each turns up about 1/9 of the time."""
    counts = Counter(tuple(derangement(4, seed).tolist()) for seed in range(4500))
    expected = {p for p in itertools.permutations(range(4)) if all(p[i] != i for i in range(4))}
    assert set(counts) == expected and len(expected) == 9
    assert all(400 <= c <= 600 for c in counts.values())


def test_derangement_of_fewer_than_two_is_refused() -> None:
    for n in (0, 1):
        with pytest.raises(ValueError, match="at least 2"):
            derangement(n, 0)


# ----------------------------------------------------------------------------- assignments
def test_two_latents_swap() -> None:
    latents = [("layers.1", 3), ("layers.1", 9)]
    assert shuffled_sources(latents, 22) == {latents[0]: latents[1], latents[1]: latents[0]}


def test_one_latent_has_no_null() -> None:
    assert shuffled_sources([("layers.1", 3)], 22) == {}
    assert shuffled_sources([], 22) == {}


def test_sources_stay_within_their_hookpoint() -> None:
    latents = [("layers.1", i) for i in range(20)] + [("layers.2", i) for i in range(15)]
    sources = shuffled_sources(latents, 22)
    check_null(sources, latents)
    assert all(dst[0] == src[0] for dst, src in sources.items())


def test_seeded_and_independent_of_order() -> None:
    latents = [("layers.1", i) for i in range(25)]
    first = shuffled_sources(latents, 22)
    assert first == shuffled_sources(list(reversed(latents)), 22)
    assert first != shuffled_sources(latents, 23)


def test_adding_a_hookpoint_leaves_the_others_alone() -> None:
    one = [("layers.1", i) for i in range(12)]
    two = one + [("layers.2", i) for i in range(8)]
    before, after = shuffled_sources(one, 22), shuffled_sources(two, 22)
    assert {k: after[k] for k in one} == before


def test_a_single_latent_hookpoint_is_spliced_into_another_cycle() -> None:
    latents = [("layers.1", i) for i in range(6)] + [("layers.2", 4)]
    sources = shuffled_sources(latents, 22)
    check_null(sources, latents)
    assert sources[("layers.2", 4)][0] == "layers.1"
    assert sum(src == ("layers.2", 4) for src in sources.values()) == 1


def test_single_latent_hookpoints_are_deranged_among_themselves() -> None:
    latents = [("layers.1", 0), ("layers.2", 5), ("layers.3", 1), ("layers.4", 2)]
    sources = shuffled_sources(latents, 22)
    check_null(sources, latents)
    # with only single-latent hookpoints, sources necessarily come from other hookpoints
    assert all(dst[0] != src[0] for dst, src in sources.items())


@pytest.mark.parametrize("seed", range(10))
def test_mixed_layouts_always_give_a_full_null(seed: int) -> None:
    rng = np.random.default_rng(seed)
    latents = [
        (f"layers.{h}", int(i))
        for h in range(int(rng.integers(1, 5)))
        for i in rng.choice(100, size=int(rng.integers(1, 6)), replace=False)
    ]
    sources = shuffled_sources(latents, seed)
    if len(latents) >= 2:
        check_null(sources, latents)
    else:
        assert sources == {}


# ------------------------------------------------------------------------------------ cost
def test_requests_per_latent_formulas() -> None:
    assert requests_per_latent("detection", 50, 50, 5) == 20
    assert requests_per_latent("fuzz", 50, 49, 5) == 20  # a last, shorter prompt
    assert requests_per_latent("simulation", 50, 50, 5) == 50 + 13
    assert requests_per_latent("simulation", 8, 1, 5) == 8 + 1
    for local in ("surprisal", "embedding", "intruder"):
        assert requests_per_latent(local, 50, 50, 5) == 0


def test_estimate_null_cost_for_the_configured_scorers() -> None:
    cfg = RunConfig(scorers=["fuzz", "detection", "intruder", "surprisal", "simulation"])
    cost = estimate_null_cost(cfg, 23)
    assert cost.per_latent == {"fuzz": 20, "detection": 20, "simulation": 63}
    assert cost.requests == 23 * 103
    assert cost.skipped == ("intruder",) and set(cost.local) == {"surprisal"}
    line = cost.describe()
    assert line.startswith("--null_baseline shuffled: about 2369 more LLM requests for 23 latents")
    assert "fuzz 20/latent" in line and "no null for intruder" in line
    smaller = estimate_null_cost(cfg, 23, n_test=10, n_non_activating=10)
    assert smaller.per_latent == {"fuzz": 4, "detection": 4, "simulation": 13}


# -------------------------------------------- the estimate against the scorers' real requests
class CountingClient:
    """Answers every request with the same text and counts the requests."""

    def __init__(self) -> None:
        self.requests = 0

    async def generate(self, messages: list[dict[str, str]], **kwargs: Any) -> Any:
        from autointerp_full.llm.base import Completion

        self.requests += 1
        return Completion(text="[0]", prompt_tokens=1, completion_tokens=1)


def _record(n_test: int, n_non: int) -> Any:
    from autointerp_full.examples.types import Example, LatentRecord

    def window(hot: bool, i: int) -> Example:
        words = ["the", "cat" if hot else "dog", "sat", f"w{i}"]
        return Example(list(range(4)), words, [0.0, 3.0 if hot else 0.0, 0.0, 0.0], 0)

    test = [window(True, i) for i in range(n_test)]
    non = [window(False, i) for i in range(n_non)]
    return LatentRecord("layers.1", 7, 100, 0.01, 3.0, [], test, non)


@pytest.mark.parametrize("scorer", ["detection", "fuzz", "simulation"])
def test_estimate_equals_the_requests_a_scorer_makes(scorer: str) -> None:
    """First tries only (answer_retries=0): a scorer asks exactly what the estimate says."""
    from autointerp_full.prompts import default_prompts
    from autointerp_full.scorers import SCORERS

    cfg = RunConfig(
        scorers=[scorer],
        explainer_provider="vllm",
        explainer_api_base_url="http://127.0.0.1:9/v1",
        num_examples_per_scorer_prompt=4,
        answer_retries=0,
        structured_output="off",
    )
    n_test, n_non = 13, 9
    client = CountingClient()
    asyncio.run(SCORERS[scorer](client, default_prompts(), cfg).score(_record(n_test, n_non), "x"))
    expected = estimate_null_cost(cfg, 1, n_test=n_test, n_non_activating=n_non)
    assert client.requests == expected.per_latent[scorer]
