"""A synthetic run folder for the dashboard's tests and benchmark: examples, explanations and
score files stamped with the fingerprints the configuration gives (as the stages would write
them), so `report.summary.load_run` takes them as current. Test data only."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from autointerp_full import layout
from autointerp_full import provenance as prov
from autointerp_full.config import RunConfig

WORDS = ["the", " cat", " sat", " on", " a", " mat", " dog", " ran", " far", " <b>x</b>", " 42"]


def config(hookpoints: list[str], **changes: Any) -> RunConfig:
    base = {"model": "tiny", "sparse_model": "sae", "hookpoints": hookpoints, "name": "dash",
            "scorers": ["detection", "fuzz"]}  # fmt: skip
    return RunConfig(**{**base, **changes})


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    path.write_text(text, encoding="utf-8")


def _window(rng: random.Random, quantile: int, top: float, length: int) -> dict[str, Any]:
    words = [rng.choice(WORDS) for _ in range(length)]
    acts = [0.0] * length
    if quantile >= 0:
        peak = rng.randrange(length)
        acts[peak] = round(top * (quantile + 1) / 4 * rng.uniform(0.8, 1.0), 3)
        if peak + 1 < length:
            acts[peak + 1] = round(acts[peak] * 0.3, 3)
    return {"tokens": list(range(length)), "str_tokens": words, "activations": acts,
            "quantile": quantile}  # fmt: skip


def record(hookpoint: str, latent: int, rng: random.Random, length: int = 16) -> dict[str, Any]:
    top = round(rng.uniform(2.0, 10.0), 3)
    train = [_window(rng, q, top, length) for q in range(4) for _ in range(3)]
    test = [_window(rng, q, top, length) for q in range(4) for _ in range(2)]
    return {
        "hookpoint": hookpoint,
        "latent": latent,
        "n_activating": rng.randrange(20, 5000),
        "firing_rate": round(rng.uniform(1e-4, 0.05), 6),
        "max_activation": top,
        "train": train,
        "test": test,
        "non_activating": [_window(rng, -1, top, length) for _ in range(4)],
    }


def score_file(scorer: str, hookpoint: str, latent: int, rng: random.Random,
               state: str = "") -> dict[str, Any]:  # fmt: skip
    examples = []
    for i in range(10):
        activating = i < 5
        prediction = rng.random() < 0.7 if activating else rng.random() < 0.3
        examples.append({"text": f"example {i} of latent {latent}", "activating": activating,
                         "quantile": i % 4 if activating else -1, "prediction": prediction,
                         "correct": prediction == activating})  # fmt: skip
    right = sum(e["correct"] for e in examples)
    data: dict[str, Any] = {
        "scorer": scorer,
        "hookpoint": hookpoint,
        "latent": latent,
        "explanation": "e",
        "examples": examples,
        "metrics": {"accuracy": right / len(examples), "n": len(examples), "n_failed": 0},
        "error": None,
    }
    if state == "incomplete":
        data["incomplete"] = True
        data["metrics"].update({"n_batches": 2, "n_failed_batches": 1, "n_failed": 5})
    if state == "error":
        data.update(examples=[], metrics={}, error="every request failed (2): 500")
    return data


def build_run(root: Path, n_latents: int, hookpoints: tuple[str, ...] = ("layers.1",),
              seed: int = 0, nulls: bool = False) -> tuple[Path, RunConfig]:  # fmt: skip
    """results/dash/ with n_latents latents spread over `hookpoints`. Latent 1 of the first
    hookpoint has an incomplete detection score, latent 2 a failed one, latent 3 no explanation
    (its explaining failed); latent 0's explanation holds markup. With `nulls`, every explained
    latent also has null scores (--null_baseline shuffled) with the next latent's explanation."""
    from autointerp_full.prompts import default_prompts

    cfg = config(list(hookpoints), results_dir=str(root))
    run = layout.RunLayout.of(cfg)
    prompts = default_prompts()
    rng = random.Random(seed)
    index: dict[str, Any] = {}
    failures: dict[str, str] = {}
    per_hp = -(-n_latents // len(hookpoints))
    for h, hp in enumerate(hookpoints):
        cache = prov.cache_ref({"model": cfg.model, "hookpoint": hp, "n_tokens": 1000})
        ex_inputs = prov.examples_inputs(cfg, cache)
        ex_fp = prov.fingerprint(ex_inputs)
        index[hp] = {"fingerprint": ex_fp, "inputs": ex_inputs, "skipped": {}}
        ex_in = prov.explanation_inputs(cfg, prompts, ex_fp)
        explained: list[tuple[int, prov.Explanation]] = []
        for latent in range(min(per_hp, n_latents - h * per_hp)):
            _write(layout.example_file(run.examples, hp, latent),
                   prov.stamp(record(hp, latent, rng), ex_inputs))  # fmt: skip
            if h == 0 and latent == 3:
                failures[layout.latent_stem(hp, latent)] = "unparseable reply"
                continue
            text = f"latent {latent}: {rng.choice(['cats', 'dogs', 'mats', 'numbers'])} words"
            if h == 0 and latent == 0:
                text = "<script>alert('x')</script> & cats"
            _write(layout.explanation_file(run.explanations, hp, latent), text)
            side = prov.explanation_record(hp, latent, text, ex_in)
            _write(layout.explanation_provenance_file(run.explanations, hp, latent), side)
            explanation = prov.Explanation(text, prov.fingerprint(ex_in))
            explained.append((latent, explanation))
            for scorer in cfg.scorers:
                state = ""
                if h == 0 and scorer == "detection":
                    state = {1: "incomplete", 2: "error"}.get(latent, "")
                data = score_file(scorer, hp, latent, rng, state)
                inputs = prov.score_inputs(cfg, prompts, scorer, ex_fp, explanation)
                _write(layout.score_file(run.scores, scorer, hp, latent),
                       prov.stamp(data, inputs))  # fmt: skip
        if nulls:
            _write_nulls(cfg, prompts, run, hp, ex_fp, explained, rng)
    _write(layout.skipped_file(run.examples), index)
    _write(layout.failures_file(run.explanations), failures)
    return run.root, cfg


def _write_nulls(cfg: RunConfig, prompts: Any, run: layout.RunLayout, hp: str, ex_fp: str,
                 explained: list[tuple[int, Any]], rng: random.Random) -> None:  # fmt: skip
    """Each explained latent scored with the next one's explanation (a derangement)."""
    for i, (latent, _) in enumerate(explained):
        source, explanation = explained[(i + 1) % len(explained)]
        for scorer in cfg.scorers:
            data = score_file(scorer, hp, latent, rng)
            data["explanation"] = explanation.text
            inputs = prov.null_score_inputs(cfg, prompts, scorer, ex_fp, (hp, source), explanation)
            _write(layout.null_score_file(run.scores, scorer, hp, latent),
                   prov.stamp(data, inputs))  # fmt: skip
