"""summary.json (metrics per scorer and hookpoint, with failure counts) and the CLI's final table.

Reads only the run directory's files, so it works the same after the CLI and in a pipeline step."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autointerp_full import layout
from autointerp_full import provenance as prov
from autointerp_full.cache.format import CONFIG_FILE as CACHE_CONFIG
from autointerp_full.io import atomic_write_json, read_json
from autointerp_full.scorers import BINARY_SCORERS, HEADLINE_METRIC
from autointerp_full.scorers.base import binary_metrics

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig

log = logging.getLogger(__name__)

LatentKey = layout.LatentKey
# Count-like metrics are summed over latents; every other number is averaged.
COUNT_METRICS = (
    "n",
    "n_failed",
    "n_batches",
    "n_failed_batches",
    "n_retries",
    "n_length_mismatch",
)


@dataclass
class RunView:
    """The artifacts of a run folder that belong to the current configuration and latent
    selection (their fingerprints match what `cfg` gives), and how many files were left out."""

    examples: dict[LatentKey, Path] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    explanations: dict[LatentKey, str] = field(default_factory=dict)
    explanation_failures: dict[LatentKey, str] = field(default_factory=dict)
    scores: dict[str, dict[LatentKey, dict[str, Any]]] = field(default_factory=dict)
    # Files on disk of another configuration (or of latents no longer selected), per stage.
    left_out: dict[str, int] = field(
        default_factory=lambda: {"examples": 0, "explanations": 0, "scores": 0}
    )


def _examples_fingerprints(
    run: layout.RunLayout, cfg: RunConfig, index: dict[str, prov.ExamplesEntry]
) -> dict[str, str | None]:
    """The examples fingerprint each hookpoint has under `cfg`. The cache is taken from its
    config.json when the run folder holds it (the CLI), else as the examples recorded it (the
    pipeline's report step, which gets no cache)."""
    out: dict[str, str | None] = {}
    for hookpoint in cfg.hookpoints:
        config_path = run.cache(hookpoint) / CACHE_CONFIG
        entry = index.get(hookpoint)
        config = prov.read_json_or_none(config_path)
        if isinstance(config, dict):
            cache = prov.cache_ref(config)
        elif entry is not None and entry.inputs is not None and "cache" in entry.inputs:
            cache = entry.inputs["cache"]
        else:
            out[hookpoint] = None
            continue
        out[hookpoint] = prov.fingerprint(prov.examples_inputs(cfg, cache))
    return out


def load_run(run_dir: Path, cfg: RunConfig) -> RunView:
    """The current artifacts of `run_dir` (see RunView)."""
    from autointerp_full.prompts import load_prompts

    run = layout.RunLayout(Path(run_dir))
    view = RunView()
    index = prov.read_examples_index(layout.skipped_file(run.examples))
    expected = _examples_fingerprints(run, cfg, index)
    for hookpoint, fp in expected.items():
        entry = index.get(hookpoint)
        if fp is not None and entry is not None and entry.fingerprint == fp:
            view.skipped[hookpoint] = {
                k: n for k, n in entry.skipped.items() if layout.is_selected(cfg, hookpoint, int(k))
            }
    example_fp: dict[LatentKey, str] = {}
    for path, hookpoint, latent in layout.latent_files(run.examples, layout.EXAMPLE_EXT):
        fp = expected.get(hookpoint)
        if (
            fp is not None
            and layout.is_selected(cfg, hookpoint, latent)
            and prov.peek_fingerprint(path) == fp
        ):
            view.examples[(hookpoint, latent)] = path
            example_fp[(hookpoint, latent)] = fp
        else:
            view.left_out["examples"] += 1
    prompts = load_prompts(cfg)
    current = _load_explanations(run, cfg, prompts, example_fp, view)
    _load_failures(run, view)
    _load_scores(run, cfg, prompts, example_fp, current, view)
    return view


def _load_explanations(
    run: layout.RunLayout,
    cfg: RunConfig,
    prompts: Any,
    example_fp: dict[LatentKey, str],
    view: RunView,
) -> dict[LatentKey, prov.Explanation]:
    current: dict[LatentKey, prov.Explanation] = {}
    hand_made = cfg.effective_explainer == "none"
    for path, hookpoint, latent in layout.latent_files(run.explanations, layout.EXPLANATION_EXT):
        key = (hookpoint, latent)
        side = layout.explanation_provenance_file(run.explanations, hookpoint, latent)
        text = path.read_text(encoding="utf-8")
        recorded = prov.vouched_fingerprint(prov.read_json_or_none(side), text)
        ok = key in example_fp and (
            hand_made
            or recorded == prov.fingerprint(prov.explanation_inputs(cfg, prompts, example_fp[key]))
        )
        if not ok:
            view.left_out["explanations"] += 1
            continue
        current[key] = prov.Explanation(text, recorded)
        view.explanations[key] = text.strip()
    return current


def _load_failures(run: layout.RunLayout, view: RunView) -> None:
    """Explanation failures of current latents that still have no current explanation."""
    recorded = prov.read_json_or_none(layout.failures_file(run.explanations))
    for stem, message in (recorded if isinstance(recorded, dict) else {}).items():
        key = layout.parse_stem(stem)
        if key is not None and key in view.examples and key not in view.explanations:
            view.explanation_failures[key] = str(message)


def _load_scores(
    run: layout.RunLayout,
    cfg: RunConfig,
    prompts: Any,
    example_fp: dict[LatentKey, str],
    explanations: dict[LatentKey, prov.Explanation],
    view: RunView,
) -> None:
    from autointerp_full.scorers import SCORERS

    for folder in layout.scorer_dirs(run.scores):
        scorer = folder.name
        files: dict[LatentKey, dict[str, Any]] = {}
        for path, hookpoint, latent in layout.latent_files(folder, layout.SCORE_EXT):
            key = (hookpoint, latent)
            needs = getattr(SCORERS.get(scorer), "needs_explanation", True)
            if (
                scorer not in cfg.scorers
                or key not in example_fp
                or (needs and key not in explanations)
            ):
                view.left_out["scores"] += 1
                continue
            try:
                data = read_json(path)
            except (OSError, json.JSONDecodeError) as exc:
                # Counted as a failed latent: it cannot be read, so it cannot be checked either.
                log.warning("unreadable score file %s: %s", path, exc)
                files[key] = {"error": f"unreadable score file: {exc}", "metrics": {}}
                continue
            explanation = explanations.get(key) if needs else None
            inputs = prov.score_inputs(cfg, prompts, scorer, example_fp[key], explanation)
            if prov.recorded_fingerprint(data) != prov.fingerprint(inputs):
                view.left_out["scores"] += 1
                continue
            files[key] = data
        if scorer in cfg.scorers:
            view.scores[scorer] = files


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def aggregate(scorer: str, files: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics over a set of latents' score files: means per latent, count totals and, for yes/no
    scorers, metrics pooled over every example of the latents that were scored."""
    ok = [f for f in files if not f.get("error")]
    sums: dict[str, list[float]] = {}
    totals: dict[str, int] = {}
    for f in ok:
        for name, value in (f.get("metrics") or {}).items():
            number = _number(value)
            if number is None:
                continue
            if name in COUNT_METRICS:
                totals[name] = totals.get(name, 0) + int(number)
            else:
                sums.setdefault(name, []).append(number)
    out: dict[str, Any] = {
        "n_latents": len(files),
        "n_scored": len(ok),
        "n_failed": len(files) - len(ok),
        # Scored, but some batches failed every retry (their examples are left out).
        "n_incomplete": sum(1 for f in ok if f.get("incomplete")),
        "mean_per_latent": {k: sum(v) / len(v) for k, v in sorted(sums.items())},
        "totals": dict(sorted(totals.items())),
    }
    examples = [e for f in ok for e in f.get("examples", [])]
    if scorer in BINARY_SCORERS:
        out["pooled"] = binary_metrics(
            [bool(e["activating"]) for e in examples], [e.get("prediction") for e in examples]
        )
    elif scorer == "intruder":
        n_correct = sum(1 for e in examples if e.get("correct"))
        out["pooled"] = {
            "accuracy": n_correct / len(examples) if examples else None,
            "n": len(examples),
        }
    return out


def write_summary(run_dir: Path, cfg: RunConfig, extra: dict[str, Any] | None = None) -> dict:
    """Aggregate the run's current score files into run_dir/summary.json (written atomically).

    Only artifacts of this configuration and latent selection count (see load_run); files of
    other configurations are left out, and their number is reported as `left_out`."""
    run = layout.RunLayout(Path(run_dir))
    view = load_run(run.root, cfg)
    hookpoints = list(cfg.hookpoints)
    built = sorted(view.examples)

    summary: dict[str, Any] = {"run": cfg.run_name, "hookpoints": hookpoints, "scorers": {}}
    for scorer in cfg.scorers:
        files = view.scores.get(scorer, {})
        per_hookpoint = {}
        for hp in hookpoints:
            entry = aggregate(scorer, [f for k, f in files.items() if k[0] == hp])
            entry["n_skipped"] = len(view.skipped.get(hp, {}))
            per_hookpoint[hp] = entry
        overall = aggregate(scorer, list(files.values()))
        overall["n_skipped"] = sum(len(view.skipped.get(hp, {})) for hp in hookpoints)
        summary["scorers"][scorer] = {"overall": overall, "hookpoints": per_hookpoint}

    summary["examples"] = {
        hp: {
            "n_latents": sum(1 for k in built if k[0] == hp),
            "n_skipped": len(view.skipped.get(hp, {})),
        }
        for hp in hookpoints
    }
    summary["explanations"] = {}
    for hp in hookpoints:
        wanted = [k for k in built if k[0] == hp]
        summary["explanations"][hp] = {
            "n_explained": sum(1 for k in view.explanations if k[0] == hp),
            "n_failed": sum(1 for k in view.explanation_failures if k[0] == hp),
            "n_missing": sum(
                1
                for k in wanted
                if k not in view.explanations and k not in view.explanation_failures
            ),
        }
    if view.explanation_failures:
        summary["explanation_failures"] = {
            layout.latent_stem(*k): msg for k, msg in sorted(view.explanation_failures.items())
        }
    # Files on disk that belong to another configuration or latent selection.
    summary["left_out"] = dict(view.left_out)
    summary.update(extra or {})
    atomic_write_json(run.summary, summary)
    return summary


def _cell(score: dict[str, Any] | None, scorer: str) -> str:
    if score is None:
        return "-"
    if score.get("error"):
        return "err"
    value = _number((score.get("metrics") or {}).get(HEADLINE_METRIC.get(scorer, "accuracy")))
    return "n/a" if value is None else f"{value:.2f}"


def print_table(run_dir: Path, cfg: RunConfig, width: int = 50) -> str:
    """A plain-text table of the current artifacts: one row per latent, the explanation
    (truncated) and one column per scorer with its headline metric (accuracy, correlation or
    AUC); 'err' marks a failed latent."""
    view = load_run(Path(run_dir), cfg)
    scorers = list(cfg.scorers)
    scores, explanations, failures = view.scores, view.explanations, view.explanation_failures
    keys = sorted(set(explanations) | set(failures) | {k for s in scores.values() for k in s})
    header = ["hookpoint", "latent", "explanation"] + [
        f"{s} {HEADLINE_METRIC.get(s, 'accuracy')[:4]}" for s in scorers
    ]
    rows = [header]
    for key in keys:
        text = explanations.get(key)
        if text is None:
            text = "(failed)" if key in failures else "-"
        text = " ".join(text.split())
        if len(text) > width:
            text = text[: width - 3] + "..."
        rows.append(
            [key[0], str(key[1]), text] + [_cell(scores.get(s, {}).get(key), s) for s in scorers]
        )
    if len(rows) == 1:
        return "no latents scored"
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        cells = [
            cell.ljust(w) if c == 2 or c == 0 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
