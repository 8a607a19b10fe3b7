"""summary.json (metrics per scorer and hookpoint, with failure counts) and the CLI's final table.

Reads only the run directory's files, so it works the same after the CLI and in a pipeline step."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autointerp_full.io import atomic_write_json, read_json
from autointerp_full.scorers import BINARY_SCORERS, HEADLINE_METRIC
from autointerp_full.scorers.base import binary_metrics

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig

log = logging.getLogger(__name__)

LatentKey = tuple[str, int]
# Count-like metrics are summed over latents; every other number is averaged.
COUNT_METRICS = ("n", "n_failed", "n_batches", "n_failed_batches", "n_length_mismatch")
EXPLANATION_FAILURES = "failures.json"


def parse_stem(stem: str) -> LatentKey | None:
    """('layers.16', 7) from 'layers.16_latent_7'; None for files that are not per-latent."""
    hookpoint, sep, latent = stem.rpartition("_latent_")
    if not sep or not latent.isdigit():
        return None
    return hookpoint, int(latent)


def load_scores(run_dir: Path) -> dict[str, dict[LatentKey, dict[str, Any]]]:
    """{scorer: {(hookpoint, latent): score file}} for every scorer folder under scores/.

    An unreadable file (say, a run killed by hand mid-write before writes were atomic) is
    logged and counted as a failed latent rather than stopping the report."""
    out: dict[str, dict[LatentKey, dict[str, Any]]] = {}
    scores_dir = Path(run_dir) / "scores"
    if not scores_dir.is_dir():
        return out
    for folder in sorted(p for p in scores_dir.iterdir() if p.is_dir()):
        files: dict[LatentKey, dict[str, Any]] = {}
        for path in sorted(folder.glob("*.txt")):
            key = parse_stem(path.stem)
            if key is None:
                continue
            try:
                files[key] = read_json(path)
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("unreadable score file %s: %s", path, exc)
                files[key] = {"error": f"unreadable score file: {exc}", "metrics": {}}
        out[folder.name] = files
    return out


def load_explanations(run_dir: Path) -> dict[LatentKey, str]:
    out: dict[LatentKey, str] = {}
    folder = Path(run_dir) / "explanations"
    for path in sorted(folder.glob("*.txt")) if folder.is_dir() else []:
        key = parse_stem(path.stem)
        if key is not None:
            out[key] = path.read_text(encoding="utf-8").strip()
    return out


def load_explanation_failures(run_dir: Path) -> dict[LatentKey, str]:
    path = Path(run_dir) / "explanations" / EXPLANATION_FAILURES
    if not path.exists():
        return {}
    out: dict[LatentKey, str] = {}
    for stem, message in read_json(path).items():
        key = parse_stem(stem)
        if key is not None:
            out[key] = str(message)
    return out


def load_skipped(run_dir: Path) -> dict[str, dict[str, int]]:
    path = Path(run_dir) / "examples" / "skipped.json"
    return read_json(path) if path.exists() else {}


def example_keys(run_dir: Path) -> list[LatentKey]:
    folder = Path(run_dir) / "examples"
    keys = [parse_stem(p.stem) for p in folder.glob("*_latent_*.json")] if folder.is_dir() else []
    return sorted(k for k in keys if k is not None)


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
    """Aggregate the run's score files into run_dir/summary.json (written atomically)."""
    run_dir = Path(run_dir)
    scores = load_scores(run_dir)
    explanations = load_explanations(run_dir)
    failures = load_explanation_failures(run_dir)
    skipped = load_skipped(run_dir)
    built = example_keys(run_dir)
    hookpoints = list(cfg.hookpoints)
    seen = {k[0] for k in built} | {k[0] for files in scores.values() for k in files}
    hookpoints += sorted(seen - set(hookpoints))

    summary: dict[str, Any] = {"run": cfg.run_name, "hookpoints": hookpoints, "scorers": {}}
    for scorer in list(dict.fromkeys([*cfg.scorers, *scores])):
        files = scores.get(scorer, {})
        per_hookpoint = {}
        for hp in hookpoints:
            entry = aggregate(scorer, [f for k, f in files.items() if k[0] == hp])
            entry["n_skipped"] = len(skipped.get(hp, {}))
            per_hookpoint[hp] = entry
        overall = aggregate(scorer, list(files.values()))
        overall["n_skipped"] = sum(len(skipped.get(hp, {})) for hp in hookpoints)
        summary["scorers"][scorer] = {"overall": overall, "hookpoints": per_hookpoint}

    summary["examples"] = {
        hp: {
            "n_latents": sum(1 for k in built if k[0] == hp),
            "n_skipped": len(skipped.get(hp, {})),
        }
        for hp in hookpoints
    }
    summary["explanations"] = {}
    for hp in hookpoints:
        wanted = [k for k in built if k[0] == hp]
        summary["explanations"][hp] = {
            "n_explained": sum(1 for k in explanations if k[0] == hp),
            "n_failed": sum(1 for k in failures if k[0] == hp and k not in explanations),
            "n_missing": sum(1 for k in wanted if k not in explanations and k not in failures),
        }
    failed = {
        f"{hp}_latent_{i}": msg for (hp, i), msg in failures.items() if (hp, i) not in explanations
    }
    if failed:
        summary["explanation_failures"] = failed
    summary.update(extra or {})
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def _cell(score: dict[str, Any] | None, scorer: str) -> str:
    if score is None:
        return "-"
    if score.get("error"):
        return "err"
    value = _number((score.get("metrics") or {}).get(HEADLINE_METRIC.get(scorer, "accuracy")))
    return "n/a" if value is None else f"{value:.2f}"


def print_table(run_dir: Path, scorers: list[str], width: int = 50) -> str:
    """A plain-text table: one row per latent, the explanation (truncated) and one column per
    scorer with its headline metric (accuracy, correlation or AUC); 'err' marks a failed latent."""
    run_dir = Path(run_dir)
    scores = load_scores(run_dir)
    explanations = load_explanations(run_dir)
    failures = load_explanation_failures(run_dir)
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
