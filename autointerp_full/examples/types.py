"""The example windows of one latent, as stored in examples/<hookpoint>_latent_<id>.json."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NON_ACTIVATING = -1  # the `quantile` of a window where the latent never fires


@dataclass
class Example:
    """One window of tokens with the latent's activation on every token."""

    tokens: list[int]
    str_tokens: list[str]
    activations: list[float]
    quantile: int = NON_ACTIVATING

    @property
    def max_activation(self) -> float:
        return max(self.activations, default=0.0)

    @property
    def text(self) -> str:
        return "".join(self.str_tokens)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": list(self.tokens),
            "str_tokens": list(self.str_tokens),
            "activations": list(map(float, self.activations)),
            "quantile": int(self.quantile),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Example:
        return cls(
            tokens=[int(t) for t in data["tokens"]],
            str_tokens=[str(s) for s in data["str_tokens"]],
            activations=[float(a) for a in data["activations"]],
            quantile=int(data.get("quantile", NON_ACTIVATING)),
        )


@dataclass
class LatentRecord:
    """Everything the explainers and scorers need about one latent.

    `train` and `test` are activating windows, strongest first; `non_activating` are windows
    where the latent is zero throughout, held out for the scorers. `contrast` holds further
    non-activating windows for the contrastive explainer, so it never sees a scored window.
    """

    hookpoint: str
    latent: int
    n_activating: int
    firing_rate: float
    max_activation: float
    train: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    non_activating: list[Example] = field(default_factory=list)
    contrast: list[Example] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "hookpoint": self.hookpoint,
            "latent": int(self.latent),
            "n_activating": int(self.n_activating),
            "firing_rate": float(self.firing_rate),
            "max_activation": float(self.max_activation),
            "train": [e.to_dict() for e in self.train],
            "test": [e.to_dict() for e in self.test],
            "non_activating": [e.to_dict() for e in self.non_activating],
        }
        if self.contrast:
            data["contrast"] = [e.to_dict() for e in self.contrast]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatentRecord:
        return cls(
            hookpoint=str(data["hookpoint"]),
            latent=int(data["latent"]),
            n_activating=int(data["n_activating"]),
            firing_rate=float(data["firing_rate"]),
            max_activation=float(data["max_activation"]),
            train=[Example.from_dict(e) for e in data.get("train", [])],
            test=[Example.from_dict(e) for e in data.get("test", [])],
            non_activating=[Example.from_dict(e) for e in data.get("non_activating", [])],
            contrast=[Example.from_dict(e) for e in data.get("contrast", [])],
        )


@dataclass
class LatentWindows:
    """A latent's record as arrays, as the builder makes it: one row per window, the sections
    (train, test, non_activating, contrast) one after another. The examples stage writes its
    file straight from these; `record()` gives the LatentRecord the other stages use."""

    hookpoint: str
    latent: int
    n_activating: int
    firing_rate: float
    max_activation: float
    tokens: np.ndarray  # (windows, length) token ids
    str_tokens: np.ndarray  # (windows, length) object array of texts
    activations: np.ndarray  # (windows, length) float64, to 4 decimals
    quantiles: list[int]
    sections: dict[str, int]  # section name -> its number of windows, in order

    def spans(self) -> Iterator[tuple[str, int, int]]:
        """(section, first row, end row) of each section."""
        start = 0
        for name, n in self.sections.items():
            yield name, start, start + n
            start += n

    def record(self) -> LatentRecord:
        ids, texts, values = (
            self.tokens.tolist(), self.str_tokens.tolist(), self.activations.tolist()
        )  # fmt: skip
        examples = [
            Example(tokens=t, str_tokens=s, activations=a, quantile=q)
            for t, s, a, q in zip(ids, texts, values, self.quantiles, strict=True)
        ]
        parts = {name: examples[a:b] for name, a, b in self.spans()}
        return LatentRecord(
            hookpoint=self.hookpoint,
            latent=self.latent,
            n_activating=self.n_activating,
            firing_rate=self.firing_rate,
            max_activation=self.max_activation,
            **parts,
        )
