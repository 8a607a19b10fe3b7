"""A finished run folder written as the stages would write it (current fingerprints, the
run_config.json), without running a model: for the export and compare tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autointerp_full import layout
from autointerp_full import provenance as prov
from autointerp_full.config import RunConfig


def write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")


def window(words: list[str], acts: list[float], quantile: int) -> dict[str, Any]:
    return {
        "tokens": [100 + i for i in range(len(words))],
        "str_tokens": words,
        "activations": acts,
        "quantile": quantile,
    }


def config(name: str, hookpoints: list[str], **changes: Any) -> RunConfig:
    base = {"model": "tiny", "sparse_model": "sae", "hookpoints": hookpoints, "name": name,
            "scorers": ["detection", "fuzz"]}  # fmt: skip
    return RunConfig(**{**base, **changes})


def score_data(
    scorer: str,
    hp: str,
    latent: int,
    right: int,
    wrong: int,
    *,
    error: str | None = None,
    incomplete: bool = False,
) -> dict[str, Any]:
    """A yes/no score file's content: `right` and `wrong` answers, alternating labels."""
    examples = []
    for i in range(right + wrong):
        activating = i % 2 == 0
        prediction = activating if i < right else not activating
        examples.append({"text": f"ex {i}", "activating": activating,
                         "quantile": 1 if activating else -1, "prediction": prediction,
                         "correct": prediction == activating})  # fmt: skip
    n = right + wrong
    data: dict[str, Any] = {
        "scorer": scorer,
        "hookpoint": hp,
        "latent": latent,
        "explanation": "e",
        "examples": [] if error else examples,
        "metrics": {} if error else {"accuracy": right / n if n else None, "n": n, "n_failed": 0},
        "error": error,
    }
    if incomplete:
        data["incomplete"] = True
    return data


class RunBuilder:
    """Writes examples, explanations and score files with the fingerprints `cfg` gives."""

    def __init__(self, root: Path, cfg: RunConfig) -> None:
        from autointerp_full.prompts import default_prompts

        self.run = layout.RunLayout(Path(root))
        self.cfg, self.prompts = cfg, default_prompts()
        self.examples_inputs: dict[str, dict[str, Any]] = {}
        self.explanations: dict[layout.LatentKey, prov.Explanation] = {}
        for hp in cfg.hookpoints:
            cache = prov.cache_ref({"model": cfg.model, "hookpoint": hp, "n_tokens": 100})
            self.examples_inputs[hp] = prov.examples_inputs(cfg, cache)
        write(self.run.run_config, cfg.public_dict())
        self.index({})

    def fp(self, hp: str) -> str:
        return prov.fingerprint(self.examples_inputs[hp])

    def index(self, skipped: dict[str, dict[str, int]]) -> None:
        write(
            layout.skipped_file(self.run.examples),
            {
                hp: {
                    "fingerprint": self.fp(hp),
                    "inputs": self.examples_inputs[hp],
                    "skipped": skipped.get(hp, {}),
                }  # fmt: skip
                for hp in self.cfg.hookpoints
            },
        )

    def examples(self, hp: str, latent: int, n_activating: int = 300) -> dict[str, Any]:
        record = {
            "hookpoint": hp,
            "latent": latent,
            "n_activating": n_activating,
            "firing_rate": n_activating / 100_000,
            "max_activation": 4.0 + latent,
            "train": [
                window(["the", " cat", " sat"], [0.0, 4.0 + latent, 1.0], 1),
                window(["a", " cat", "."], [0.0, 2.0, 0.0], 0),
            ],
            "test": [window(["my", " cat"], [0.0, 2.5], 1)],
            "non_activating": [window(["a", " dog"], [0.0, 0.0], -1)],
        }
        write(layout.example_file(self.run.examples, hp, latent),
              prov.stamp(record, self.examples_inputs[hp]))  # fmt: skip
        return record

    def explanation(self, hp: str, latent: int, text: str) -> None:
        folder = self.run.explanations
        inputs = prov.explanation_inputs(self.cfg, self.prompts, self.fp(hp))
        write(layout.explanation_file(folder, hp, latent), text)
        write(layout.explanation_provenance_file(folder, hp, latent),
              prov.explanation_record(hp, latent, text, inputs))  # fmt: skip
        self.explanations[(hp, latent)] = prov.Explanation(text, prov.fingerprint(inputs))

    def score(
        self,
        scorer: str,
        hp: str,
        latent: int,
        right: int,
        wrong: int,
        *,
        error: str | None = None,
        incomplete: bool = False,
    ) -> dict[str, Any]:
        """A yes/no score file with `right` and `wrong` answers (activating examples first)."""
        data = score_data(scorer, hp, latent, right, wrong, error=error, incomplete=incomplete)
        explanation = self.explanations.get((hp, latent), prov.Explanation("gone", None))
        inputs = prov.score_inputs(self.cfg, self.prompts, scorer, self.fp(hp), explanation)
        stamped = prov.stamp(data, inputs)
        write(layout.score_file(self.run.scores, scorer, hp, latent), stamped)
        return stamped

    def null(self, scorer: str, hp: str, latent: int, source: int, right: int, wrong: int) -> dict:
        """A null score: latent's examples scored with `source`'s explanation."""
        data = score_data(scorer, hp, latent, right, wrong)
        inputs = prov.null_score_inputs(self.cfg, self.prompts, scorer, self.fp(hp), (hp, source),
                                        self.explanations[(hp, source)])  # fmt: skip
        stamped = prov.stamp(data, inputs)
        write(layout.null_score_file(self.run.scores, scorer, hp, latent), stamped)
        return stamped

    def latent(self, hp: str, latent: int, text: str, right: dict[str, int], n: int = 10) -> None:
        """Examples, explanation and one score per scorer: right[scorer] of n answers right."""
        self.examples(hp, latent)
        self.explanation(hp, latent, text)
        for scorer, k in right.items():
            self.score(scorer, hp, latent, k, n - k)
