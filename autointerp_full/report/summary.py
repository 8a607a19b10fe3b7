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
from autointerp_full.stats import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    bootstrap_mean,
    compare_with_null,
    wilson_interval,
)
from autointerp_full.tables import aligned

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
    # --null_baseline shuffled: per scorer, each latent's score file with another latent's
    # explanation (scores/shuffled_null/<scorer>/); empty when the null is off.
    nulls: dict[str, dict[LatentKey, dict[str, Any]]] = field(default_factory=dict)
    # Files on disk of another configuration (or of latents no longer selected), per stage.
    left_out: dict[str, int] = field(
        default_factory=lambda: {"examples": 0, "explanations": 0, "scores": 0, "null_scores": 0}
    )

    def latent_keys(self) -> list[LatentKey]:
        """Every latent with a current artifact (examples, explanation, failure or score),
        in (hookpoint, latent) order."""
        return sorted(
            set(self.examples)
            | set(self.explanations)
            | set(self.explanation_failures)
            | {key for files in self.scores.values() for key in files}
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
    _load_nulls(run, cfg, prompts, example_fp, current, view)
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

    def _expected(key: LatentKey) -> str:
        """The fingerprint the current configuration gives this latent's explanation."""
        output_fp = prov.output_fingerprint(cfg, run.output, *key)
        return prov.fingerprint(prov.explanation_inputs(cfg, prompts, example_fp[key], output_fp))

    for path, hookpoint, latent in layout.latent_files(run.explanations, layout.EXPLANATION_EXT):
        key = (hookpoint, latent)
        side = layout.explanation_provenance_file(run.explanations, hookpoint, latent)
        text = path.read_text(encoding="utf-8")
        recorded = prov.vouched_fingerprint(prov.read_json_or_none(side), text)
        ok = key in example_fp and (hand_made or recorded == _expected(key))
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


def _load_nulls(
    run: layout.RunLayout,
    cfg: RunConfig,
    prompts: Any,
    example_fp: dict[LatentKey, str],
    explanations: dict[LatentKey, prov.Explanation],
    view: RunView,
) -> None:
    """The current null scores: the recorded source latent must still have a current
    explanation, and the file's fingerprint must be the one that explanation gives now."""
    on = cfg.null_baseline == "shuffled"
    for folder in layout.null_scorer_dirs(run.scores):
        scorer = folder.name
        files: dict[LatentKey, dict[str, Any]] = {}
        for path, hookpoint, latent in layout.latent_files(folder, layout.SCORE_EXT):
            key = (hookpoint, latent)
            if not on or scorer not in cfg.scorers or key not in example_fp:
                view.left_out["null_scores"] += 1
                continue
            try:
                data = read_json(path)
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("unreadable null score file %s: %s", path, exc)
                view.left_out["null_scores"] += 1
                continue
            source = prov.null_source(data)
            explanation = explanations.get(source) if source is not None else None
            if explanation is None or source is None:
                view.left_out["null_scores"] += 1
                continue
            inputs = prov.null_score_inputs(
                cfg, prompts, scorer, example_fp[key], source, explanation
            )
            if prov.recorded_fingerprint(data) != prov.fingerprint(inputs):
                view.left_out["null_scores"] += 1
                continue
            files[key] = data
        if on and scorer in cfg.scorers:
            view.nulls[scorer] = files


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


# ------------------------------------------------------------ scores, nulls and intervals
NULL_DESCRIPTION = (
    "shuffled: each latent's examples are also scored with another latent's explanation (a "
    "derangement within the hookpoint, fixed by --seed), by every scorer that reads "
    "explanations; its mean is the chance level of this scorer, example mix and explainer"
)
INTERVALS = {
    "confidence": CONFIDENCE,
    "per_latent": "Wilson score interval of the latent's accuracy over its answered examples "
    "(scorers whose headline metric is an accuracy); failed examples are not in n",
    "over_latents": f"percentile bootstrap of the mean over latents ({BOOTSTRAP_RESAMPLES} "
    "resamples, seeded by --seed); latents without a value are left out and counted in "
    "n_missing",
    "difference": "mean over latents of (score - null score), latents resampled in pairs; an "
    "interval that excludes 0 means the explanations carry what the scorer uses",
}


def headline_metric(scorer: str) -> str:
    return HEADLINE_METRIC.get(scorer, "accuracy")


def headline_value(data: dict[str, Any] | None, scorer: str) -> float | None:
    """A latent's headline score (None: no file, or nothing could be scored)."""
    if data is None or data.get("error"):
        return None
    return _number((data.get("metrics") or {}).get(headline_metric(scorer)))


def latent_interval(data: dict[str, Any] | None, scorer: str) -> dict[str, Any] | None:
    """The Wilson interval of a latent's accuracy over its answered examples, or None where
    the headline metric is not an accuracy (correlation, AUC) or nothing was answered."""
    if headline_metric(scorer) != "accuracy" or data is None or data.get("error"):
        return None
    metrics = data.get("metrics") or {}
    accuracy, n = _number(metrics.get("accuracy")), _number(metrics.get("n"))
    if accuracy is None or n is None or n < 1:
        return None
    return wilson_interval(round(accuracy * n), int(n)).to_dict()


def null_scorers(cfg: RunConfig) -> list[str]:
    """The selected scorers that get a null: those that read explanations, when it is on."""
    from autointerp_full.scorers import SCORERS

    if cfg.null_baseline != "shuffled":
        return []
    return [s for s in cfg.scorers if getattr(SCORERS.get(s), "needs_explanation", True)]


def null_comparison(
    cfg: RunConfig,
    scorer: str,
    scores: dict[LatentKey, dict[str, Any]],
    nulls: dict[LatentKey, dict[str, Any]] | None,
) -> dict[str, Any]:
    """The headline metric's mean over latents (`score`), the null's (`null`) and their paired
    difference (`difference`), each with its bootstrap interval (stats.Interval.to_dict());
    `null` and `difference` are None where the scorer has no null."""
    own = {k: headline_value(d, scorer) for k, d in scores.items()}
    out: dict[str, Any] = {"metric": headline_metric(scorer), "null_baseline": "none"}
    if nulls is None:
        values = [own[k] for k in sorted(own, key=repr)]
        out.update(score=bootstrap_mean(values, seed=cfg.seed).to_dict(), null=None)
        out["difference"] = None
        return out
    out["null_baseline"] = cfg.null_baseline
    null = {k: headline_value(d, scorer) for k, d in nulls.items()}
    out.update(compare_with_null(own, null, seed=cfg.seed))
    return out


def _latent_entry(
    scorer: str, data: dict[str, Any] | None, null: dict[str, Any] | None, has_null: bool
) -> dict[str, Any]:
    metrics = (data or {}).get("metrics") or {}
    entry: dict[str, Any] = {
        "metric": headline_metric(scorer),
        "value": headline_value(data, scorer),
        "interval": latent_interval(data, scorer),
        "n": _number(metrics.get("n")),
        "n_failed": _number(metrics.get("n_failed")),
        "incomplete": bool((data or {}).get("incomplete")),
        "error": None if data is None else data.get("error"),
    }
    if entry["n"] is not None:
        entry["n"] = int(entry["n"])
    if entry["n_failed"] is not None:
        entry["n_failed"] = int(entry["n_failed"])
    if data is None:
        entry["error"] = "not scored"
    if not has_null:
        return entry
    if null is None:
        entry["null"] = None
        entry["difference"] = None
        return entry
    source = prov.null_source(null)
    entry["null"] = {
        "value": headline_value(null, scorer),
        "interval": latent_interval(null, scorer),
        "incomplete": bool(null.get("incomplete")),
        "error": null.get("error"),
        "source": None if source is None else {"hookpoint": source[0], "latent": source[1]},
    }
    a, b = entry["value"], entry["null"]["value"]
    entry["difference"] = None if a is None or b is None else a - b
    return entry


def latent_entries(view: RunView, cfg: RunConfig) -> list[dict[str, Any]]:
    """summary.json's `latents`: per latent and scorer, the headline score with its Wilson
    interval, and with the null on, the null score, its source latent and the difference."""
    with_null = set(null_scorers(cfg))
    keys = sorted(
        {k for files in (*view.scores.values(), *view.nulls.values()) for k in files},
        key=lambda k: (cfg.hookpoints.index(k[0]) if k[0] in cfg.hookpoints else 0, k[1]),
    )
    out = []
    for key in keys:
        scores = {}
        for scorer in cfg.scorers:
            data = view.scores.get(scorer, {}).get(key)
            null = view.nulls.get(scorer, {}).get(key)
            scores[scorer] = _latent_entry(scorer, data, null, scorer in with_null)
        out.append({"hookpoint": key[0], "latent": key[1], "scores": scores})
    return out


def _of(files: dict[LatentKey, Any] | None, hookpoint: str) -> dict[LatentKey, Any] | None:
    """The files of one hookpoint (None stays None: no null for this scorer)."""
    return None if files is None else {k: f for k, f in files.items() if k[0] == hookpoint}


def _scorer_entry(
    cfg: RunConfig,
    scorer: str,
    files: dict[LatentKey, dict[str, Any]],
    nulls: dict[LatentKey, dict[str, Any]] | None,
    n_skipped: int,
) -> dict[str, Any]:
    entry = aggregate(scorer, list(files.values()))
    entry["n_skipped"] = n_skipped
    entry["headline"] = null_comparison(cfg, scorer, files, nulls)
    if nulls is not None:
        entry["null_scores"] = aggregate(scorer, list(nulls.values()))
    return entry


def write_summary(
    run_dir: Path,
    cfg: RunConfig,
    extra: dict[str, Any] | None = None,
    *,
    view: RunView | None = None,
) -> dict:
    """Aggregate the run's current score files into run_dir/summary.json (written atomically).

    Only artifacts of this configuration and latent selection count (see load_run); files of
    other configurations are left out, and their number is reported as `left_out`. `view`:
    load_run(run_dir, cfg) already done by the caller (the report stage loads once)."""
    run = layout.RunLayout(Path(run_dir))
    if view is None:
        view = load_run(run.root, cfg)
    hookpoints = list(cfg.hookpoints)
    built = sorted(view.examples)

    summary: dict[str, Any] = {"run": cfg.run_name, "hookpoints": hookpoints, "scorers": {}}
    with_null = null_scorers(cfg)
    summary["null_baseline"] = {
        "kind": cfg.null_baseline,
        "seed": cfg.seed,
        "scorers": with_null,
        "description": NULL_DESCRIPTION if with_null else "off (--null_baseline none)",
    }
    summary["intervals"] = dict(INTERVALS)
    for scorer in cfg.scorers:
        files = view.scores.get(scorer, {})
        nulls = view.nulls.get(scorer, {}) if scorer in with_null else None

        per_hookpoint = {
            hp: _scorer_entry(
                cfg, scorer, _of(files, hp) or {}, _of(nulls, hp), len(view.skipped.get(hp, {}))
            )
            for hp in hookpoints
        }
        n_skipped = sum(len(view.skipped.get(hp, {})) for hp in hookpoints)
        overall = _scorer_entry(cfg, scorer, files, nulls, n_skipped)
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
    # A list, so the pipeline's metrics (numeric leaves of dicts) stay per scorer.
    summary["latents"] = latent_entries(view, cfg)
    summary.update(extra or {})
    atomic_write_json(run.summary, summary)
    return summary


def _cell(score: dict[str, Any] | None, scorer: str, interval: bool = True) -> str:
    """A latent's headline score: '0.90 [0.74, 0.97]' (its Wilson interval), '*' appended
    when some batch failed; 'err' when nothing could be scored, '-' when there is no file."""
    if score is None:
        return "-"
    if score.get("error"):
        return "err"
    value = headline_value(score, scorer)
    if value is None:
        return "n/a"
    text = f"{value:.2f}"
    wilson = latent_interval(score, scorer) if interval else None
    if wilson is not None:
        text += f" [{wilson['low']:.2f}, {wilson['high']:.2f}]"
    return text + ("*" if score.get("incomplete") else "")


def _mean_cell(interval: dict[str, Any] | None) -> str:
    """'0.812 [0.774, 0.848] n=40' for a bootstrap interval over latents."""
    if interval is None:
        return "-"
    if interval.get("estimate") is None:
        return "n/a (n=0)"
    text = f"{interval['estimate']:.3f}"
    if interval.get("low") is not None and interval.get("high") is not None:
        text += f" [{interval['low']:.3f}, {interval['high']:.3f}]"
    missing = f", {interval['n_missing']} missing" if interval.get("n_missing") else ""
    return f"{text} n={interval['n']}{missing}"


# What a scorer that ignores the explanation gets, per headline metric (for the footnote).
CHANCE = {
    "accuracy": "0.5 accuracy with as many activating as non-activating examples",
    "correlation": "0 correlation",
    "auc": "0.5 AUC",
    # Output side (issue 13).
    "effect": "0 effect (nats; a random push also lowers common tokens, so compare with the null)",
    "balanced_accuracy": "0.5 balanced accuracy",
}


def _latent_rows(view: RunView, cfg: RunConfig, width: int) -> list[list[str]]:
    scorers = list(cfg.scorers)
    with_null = null_scorers(cfg)
    scores, explanations, failures = view.scores, view.explanations, view.explanation_failures
    keys = sorted(set(explanations) | set(failures) | {k for s in scores.values() for k in s})
    header = ["hookpoint", "latent", "explanation"]
    for s in scorers:
        header.append(f"{s} {headline_metric(s)[:4]}")
        if s in with_null:
            header.append(f"{s} null")
    rows = [header]
    for key in keys:
        text = explanations.get(key)
        if text is None:
            text = "(failed)" if key in failures else "-"
        text = " ".join(text.split())
        if len(text) > width:
            text = text[: width - 3] + "..."
        row = [key[0], str(key[1]), text]
        for s in scorers:
            row.append(_cell(scores.get(s, {}).get(key), s))
            if s in with_null:
                row.append(_cell(view.nulls.get(s, {}).get(key), s, interval=False))
        rows.append(row)
    return rows


def _mean_rows(view: RunView, cfg: RunConfig) -> list[list[str]]:
    """One row per scorer and hookpoint (and overall, with several hookpoints): the mean
    score, the mean null score and their difference, each with its bootstrap interval."""
    with_null = null_scorers(cfg)
    rows = [["scorer", "hookpoint", "metric", "mean score", "mean null", "score - null"]]
    groups = list(cfg.hookpoints) + (["all"] if len(cfg.hookpoints) > 1 else [])
    for scorer in cfg.scorers:
        files = view.scores.get(scorer, {})
        nulls = view.nulls.get(scorer, {}) if scorer in with_null else None
        for hp in groups:
            mine = files if hp == "all" else _of(files, hp) or {}
            theirs = nulls if hp == "all" else _of(nulls, hp)
            block = null_comparison(cfg, scorer, mine, theirs)
            rows.append([scorer, hp, block["metric"], _mean_cell(block["score"]),
                         _mean_cell(block["null"]), _mean_cell(block["difference"])])  # fmt: skip
    return rows


def _count(files: dict[str, dict[LatentKey, dict[str, Any]]], errored: bool) -> int:
    """Score files that failed outright (errored) or are incomplete (scored, batches missing)."""
    every = [f for by_key in files.values() for f in by_key.values()]
    if errored:
        return sum(1 for f in every if f.get("error"))
    return sum(1 for f in every if f.get("incomplete") and not f.get("error"))


def _footnotes(view: RunView, cfg: RunConfig) -> list[str]:
    pct = f"{CONFIDENCE * 100:g}%"
    lines = []
    incomplete, errored = _count(view.scores, False), _count(view.scores, True)
    null_incomplete, null_errored = _count(view.nulls, False), _count(view.nulls, True)
    if incomplete or null_incomplete:
        lines.append(
            f"* incomplete: {incomplete} scores and {null_incomplete} null scores have batches "
            "that failed every retry; their examples are left out (a rerun asks them again)"
        )
    if errored or null_errored:
        lines.append(f"err: nothing could be scored ({errored} scores, {null_errored} null scores)")
    lines.append(
        f"[low, high]: {pct} Wilson interval over the latent's answered examples; means: "
        f"{pct} bootstrap interval over latents (n latents)"
    )
    metrics = dict.fromkeys(headline_metric(s) for s in cfg.scorers if headline_metric(s) in CHANCE)
    chance = "; ".join(CHANCE[m] for m in metrics)
    if null_scorers(cfg):
        lines.append(
            f"Chance is {chance}. null = the same scorer on another latent's explanation "
            "(--null_baseline shuffled); a difference whose interval excludes 0 is real. "
            "A small explainer (the demo's) stays near the null; a capable one lifts it."
        )
    else:
        lines.append(
            f"Chance is {chance}. No null baseline (--null_baseline none): only chance to "
            "compare with; --null_baseline shuffled measures it."
        )
    return lines


def print_table(
    run_dir: Path, cfg: RunConfig, width: int = 50, *, view: RunView | None = None
) -> str:
    """A plain-text table of the current artifacts: one row per latent (the explanation,
    truncated, and per scorer its headline metric with a Wilson interval, and its null score),
    then per scorer and hookpoint the mean score, mean null and their difference with
    bootstrap intervals, then footnotes: '*' marks an incomplete latent, 'err' a failed one.
    `view`: the caller's load_run(run_dir, cfg), so the run is not read again."""
    if view is None:
        view = load_run(Path(run_dir), cfg)
    rows = _latent_rows(view, cfg, width)
    if len(rows) == 1:
        return "no latents scored"
    lines = aligned(rows, {0, 2})
    lines += [""] + aligned(_mean_rows(view, cfg), {0, 1, 2})
    lines += [""] + _footnotes(view, cfg)
    return "\n".join(lines)
