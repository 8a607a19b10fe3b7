"""`python -m autointerp_full compare RUN_A RUN_B`: did run B score better than run A?

A run is a run folder (`results/<name>/`, read through `report.summary.load_run`, so only the
artifacts of that run's own configuration count) or a pipeline report's summary artifact, which
holds `latent_scores.json` (`write_latent_scores`): the headline metric of every latent.

For each scorer, overall and per hookpoint, the comparison gives each run's mean over its own
scored latents and the paired change (B - A) over the latents scored in both, with its
bootstrap interval (`stats.bootstrap_paired_difference`): a change whose interval excludes 0 is
outside what resampling the latents explains. It then lists the latents whose scores moved
most, with each latent's Wilson interval in both runs where the scorer counts right answers.

Torch-free: it reads JSON files only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autointerp_full import layout
from autointerp_full.cli import OneLineParser
from autointerp_full.errors import UserError
from autointerp_full.tables import aligned

LATENT_SCORES = "latent_scores.json"  # beside summary.json in the pipeline's summary artifact
LATENT_SCORES_VERSION = 1
DEFAULT_TOP = 10
# Scorers whose per-latent headline metric is a share of right answers (a Wilson interval fits).
COUNTED_SCORERS = ("detection", "fuzz", "intruder")


# ---------------------------------------------------------------------- per-latent scores
@dataclass(frozen=True)
class LatentScore:
    """One latent's headline metric under one scorer. `value` is None for a failed latent (its
    `error` says why); `right` / `answered` count examples where the scorer counts answers."""

    value: float | None
    right: int | None = None
    answered: int | None = None
    error: str | None = None
    incomplete: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "right": self.right,
            "answered": self.answered,
            "error": self.error,
            "incomplete": self.incomplete,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatentScore:
        return cls(
            value=_number(data.get("value")),
            right=data.get("right"),
            answered=data.get("answered"),
            error=data.get("error"),
            incomplete=bool(data.get("incomplete")),
        )


@dataclass
class RunScores:
    """Every scored latent of one run: {scorer: {(hookpoint, latent): LatentScore}}."""

    source: str
    name: str
    config: dict[str, Any]
    metrics: dict[str, str] = field(default_factory=dict)  # scorer -> headline metric name
    scores: dict[str, dict[layout.LatentKey, LatentScore]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": LATENT_SCORES_VERSION,
            "run": self.name,
            "config": self.config,
            "scorers": {
                scorer: {
                    "metric": self.metrics.get(scorer),
                    "latents": {
                        layout.latent_stem(*key): score.to_dict()
                        for key, score in sorted(latents.items())
                    },
                }
                for scorer, latents in sorted(self.scores.items())
            },
        }

    @classmethod
    def from_dict(cls, data: Any, source: str) -> RunScores:
        if not isinstance(data, dict) or not isinstance(data.get("scorers"), dict):
            raise UserError(f"{source}: not a {LATENT_SCORES} file (no 'scorers' object)")
        out = cls(
            source=source, name=str(data.get("run") or source), config=data.get("config") or {}
        )
        for scorer, entry in data["scorers"].items():
            out.metrics[scorer] = str(entry.get("metric") or "accuracy")
            latents: dict[layout.LatentKey, LatentScore] = {}
            for stem, value in (entry.get("latents") or {}).items():
                key = layout.parse_stem(stem)
                if key is None or not isinstance(value, dict):
                    raise UserError(f"{source}: scorer {scorer}: bad latent entry {stem!r}")
                latents[key] = LatentScore.from_dict(value)
            out.scores[scorer] = latents
        return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def latent_score(scorer: str, data: dict[str, Any]) -> LatentScore:
    """The headline metric of one score file, with its answer counts where it has them."""
    from autointerp_full.scorers import HEADLINE_METRIC

    if data.get("error"):
        return LatentScore(None, error=str(data["error"]))
    metrics = data.get("metrics") or {}
    value = _number(metrics.get(HEADLINE_METRIC.get(scorer, "accuracy")))
    right = answered = None
    if scorer in COUNTED_SCORERS:
        # The examples whose answer arrived: a failed batch's examples have no prediction.
        examples = [e for e in data.get("examples") or [] if _answered(scorer, e)]
        answered = len(examples)
        right = sum(1 for e in examples if e.get("correct"))
    error = None if value is not None else "no headline metric"
    return LatentScore(value, right, answered, error, bool(data.get("incomplete")))


def _answered(scorer: str, example: dict[str, Any]) -> bool:
    if scorer == "intruder":
        return example.get("correct") is not None
    return example.get("prediction") is not None


def scores_of_run(run_dir: Path) -> RunScores:
    """The current per-latent scores of a run folder (its own run_config.json decides which
    files are current, as for summary.json)."""
    from autointerp_full.config import RunConfig
    from autointerp_full.io import read_json
    from autointerp_full.report.summary import load_run
    from autointerp_full.scorers import HEADLINE_METRIC

    run = layout.RunLayout(Path(run_dir))
    try:
        config = read_json(run.run_config)
        cfg = RunConfig.from_dict(config)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{run.root}: unreadable {layout.RUN_CONFIG} ({exc})") from None
    view = load_run(run.root, cfg)
    out = RunScores(source=str(run.root), name=cfg.run_name, config=config)
    for scorer in cfg.scorers:
        out.metrics[scorer] = HEADLINE_METRIC.get(scorer, "accuracy")
        out.scores[scorer] = {
            key: latent_score(scorer, data) for key, data in view.scores.get(scorer, {}).items()
        }
    return out


def write_latent_scores(run_dir: Path, out_path: Path) -> Path:
    """Write a run folder's per-latent scores as latent_scores.json (atomically)."""
    from autointerp_full.io import atomic_write_json

    atomic_write_json(Path(out_path), scores_of_run(run_dir).to_dict())
    return Path(out_path)


def load_scores(path: str | Path) -> RunScores:
    """A run folder, a folder holding latent_scores.json, or that file itself."""
    from autointerp_full.io import read_json

    where = Path(path)
    if (
        where.is_dir()
        and (where / layout.RUN_CONFIG).is_file()
        and (where / layout.SCORES).is_dir()
    ):
        return scores_of_run(where)
    file = where / LATENT_SCORES if where.is_dir() else where
    if not file.is_file():
        if not where.exists():
            raise UserError(f"{path}: no such run folder or file")
        raise UserError(
            f"{path}: neither a run folder ({layout.RUN_CONFIG} and {layout.SCORES}/) "
            f"nor a {LATENT_SCORES} file"
        )
    try:
        data = read_json(file)
    except (OSError, ValueError) as exc:
        raise UserError(f"{file}: unreadable ({exc})") from None
    return RunScores.from_dict(data, str(file))


# ------------------------------------------------------------------------------ comparing
def _interval_dict(interval: Any) -> dict[str, Any]:
    return {"estimate": interval.estimate, "low": interval.low, "high": interval.high}


def _verdict(low: float | None, high: float | None) -> str:
    """'higher' / 'lower' when the change's interval excludes 0, else 'no clear change'."""
    if low is None or high is None:
        return "n/a"
    if low > 0:
        return "higher"
    if high < 0:
        return "lower"
    return "no clear change"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _block(
    a: dict[layout.LatentKey, LatentScore],
    b: dict[layout.LatentKey, LatentScore],
    keys_a: set[layout.LatentKey],
    keys_b: set[layout.LatentKey],
    seed: int,
) -> dict[str, Any]:
    """One row of the table: each run's own mean, and the paired change over shared latents."""
    from autointerp_full.stats import bootstrap_paired_difference

    own_a = [a[k].value for k in sorted(keys_a) if a[k].value is not None]
    own_b = [b[k].value for k in sorted(keys_b) if b[k].value is not None]
    shared = sorted(k for k in keys_a & keys_b if a[k].value is not None and b[k].value is not None)
    change = bootstrap_paired_difference(
        [b[k].value for k in shared], [a[k].value for k in shared], seed=seed
    )
    return {
        "a": {
            "mean": _mean(own_a),
            "n_scored": len(own_a),
            "n_failed": sum(1 for k in keys_a if a[k].value is None),
        },
        "b": {
            "mean": _mean(own_b),
            "n_scored": len(own_b),
            "n_failed": sum(1 for k in keys_b if b[k].value is None),
        },
        "n_shared": len(shared),
        "change": _interval_dict(change),
        "confidence": change.confidence,
        "verdict": _verdict(change.low, change.high),
    }


def _latent_interval(score: LatentScore) -> tuple[float, float] | None:
    from autointerp_full.stats import wilson_interval

    if score.right is None or not score.answered:
        return None
    found = wilson_interval(score.right, score.answered)
    return found.low, found.high


def _movers(run_a: RunScores, run_b: RunScores, top: int) -> list[dict[str, Any]]:
    """The latents whose headline metric changed most (by size), over every scorer."""
    moved = []
    for scorer in sorted(set(run_a.scores) & set(run_b.scores)):
        a, b = run_a.scores[scorer], run_b.scores[scorer]
        for key in sorted(set(a) & set(b)):
            if a[key].value is None or b[key].value is None or a[key].value == b[key].value:
                continue  # failed on a side, or did not move
            ia, ib = _latent_interval(a[key]), _latent_interval(b[key])
            outside = None if ia is None or ib is None else (ia[1] < ib[0] or ib[1] < ia[0])
            moved.append(
                {
                    "scorer": scorer,
                    "hookpoint": key[0],
                    "latent": key[1],
                    "a": a[key].value,
                    "b": b[key].value,
                    "change": b[key].value - a[key].value,
                    "a_interval": list(ia) if ia else None,
                    "b_interval": list(ib) if ib else None,
                    # True when the two runs' Wilson intervals do not overlap.
                    "outside_intervals": outside,
                }
            )
    moved.sort(key=lambda m: (-abs(m["change"]), m["scorer"], m["hookpoint"], m["latent"]))
    return moved[:top]


def changed_config(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The configuration fields whose values differ (run_name and results_dir left out)."""
    ignore = {"run_name", "name", "results_dir"}
    return sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))


def compare(run_a: RunScores, run_b: RunScores, *, top: int = DEFAULT_TOP, seed: int = 0) -> dict:
    """The comparison of B against A (changes are B - A), as JSON-ready data."""
    scorers = sorted(set(run_a.scores) & set(run_b.scores))
    all_a = {k for s in run_a.scores.values() for k in s}
    all_b = {k for s in run_b.scores.values() for k in s}
    out: dict[str, Any] = {
        "a": {"run": run_a.name, "source": run_a.source, "n_latents": len(all_a)},
        "b": {"run": run_b.name, "source": run_b.source, "n_latents": len(all_b)},
        "n_shared_latents": len(all_a & all_b),
        "n_only_a": len(all_a - all_b),
        "n_only_b": len(all_b - all_a),
        "changed_config": changed_config(run_a.config, run_b.config),
        "scorers_only_a": sorted(set(run_a.scores) - set(run_b.scores)),
        "scorers_only_b": sorted(set(run_b.scores) - set(run_a.scores)),
        "scorers": {},
    }
    for scorer in scorers:
        a, b = run_a.scores[scorer], run_b.scores[scorer]
        entry = {"metric": run_b.metrics.get(scorer) or run_a.metrics.get(scorer)}
        entry["overall"] = _block(a, b, set(a), set(b), seed)
        hookpoints = sorted({k[0] for k in a} | {k[0] for k in b})
        entry["hookpoints"] = {
            hp: _block(a, b, {k for k in a if k[0] == hp}, {k for k in b if k[0] == hp}, seed)
            for hp in hookpoints
        }
        out["scorers"][scorer] = entry
    out["movers"] = _movers(run_a, run_b, top)
    return out


# ------------------------------------------------------------------------------- printing
def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def format_comparison(result: dict[str, Any]) -> str:
    """The comparison as plain text: the header counts, the table, the movers."""
    a, b = result["a"], result["b"]
    lines = [
        f"A: {a['run']} ({a['source']}), {a['n_latents']} latents scored",
        f"B: {b['run']} ({b['source']}), {b['n_latents']} latents scored",
        f"{result['n_shared_latents']} latents in both runs "
        f"({result['n_only_a']} only in A, {result['n_only_b']} only in B); "
        "changes are B - A over the latents scored in both",
    ]
    if result["changed_config"]:
        lines.append("configuration differs in: " + ", ".join(result["changed_config"]))
    for side in ("a", "b"):
        only = result[f"scorers_only_{side}"]
        if only:
            lines.append(f"scorers only in {side.upper()} (not compared): {', '.join(only)}")
    if not result["scorers"]:
        lines.append("no scorer in common: nothing to compare")
        return "\n".join(lines)
    pct = f"{next(iter(result['scorers'].values()))['overall']['confidence'] * 100:g}%"
    rows = [
        ["scorer", "hookpoint", "metric", "A mean", "B mean", "change", f"{pct} interval",
         "shared", "failed A/B", "verdict"]
    ]  # fmt: skip
    for scorer, entry in result["scorers"].items():
        blocks = [("all", entry["overall"])] + list(entry["hookpoints"].items())
        if len(entry["hookpoints"]) == 1:
            blocks = [(next(iter(entry["hookpoints"])), entry["overall"])]
        for hp, block in blocks:
            change = block["change"]
            interval = (
                "n/a"
                if change["low"] is None
                else f"[{_fmt(change['low'], True)}, {_fmt(change['high'], True)}]"
            )
            rows.append(
                [scorer, hp, entry["metric"], _fmt(block["a"]["mean"]), _fmt(block["b"]["mean"]),
                 _fmt(change["estimate"], True), interval, str(block["n_shared"]),
                 f"{block['a']['n_failed']}/{block['b']['n_failed']}", block["verdict"]]
            )  # fmt: skip
    lines += [""] + aligned(rows, left=(0, 1, 2, 9))
    lines.append(
        "verdict: 'higher'/'lower' when the bootstrap interval of the paired change (latents "
        "resampled) excludes 0; A and B means are over each run's own scored latents"
    )
    if result["movers"]:
        rows = [["scorer", "hookpoint", "latent", "A", "B", "change", "outside intervals"]]
        for m in result["movers"]:
            outside = {True: "yes", False: "no", None: "n/a"}[m["outside_intervals"]]
            rows.append(
                [m["scorer"], m["hookpoint"], str(m["latent"]), _fmt(m["a"]), _fmt(m["b"]),
                 _fmt(m["change"], True), outside]
            )  # fmt: skip
        lines += ["", f"latents that moved most ({len(result['movers'])}):"]
        lines += aligned(rows, left=(0, 1))
        lines.append(
            "outside intervals: the latent's Wilson intervals (right answers / answered "
            "examples) in A and B do not overlap; n/a for scorers without answer counts"
        )
    return "\n".join(lines)


def comparison_html(result: dict[str, Any]) -> str:
    """The comparison as an HTML section (the pipeline report's baseline block)."""
    from html import escape

    a = result["a"]
    head = (
        f"<p>Against the baseline <b>{escape(str(a['run']))}</b>: "
        f"{result['n_shared_latents']} latents in both runs ({result['n_only_a']} only in the "
        f"baseline, {result['n_only_b']} only in this run). Changes are this run minus the "
        "baseline over the latents both scored; the interval is a paired bootstrap over "
        "latents, and a change is marked when it excludes 0.</p>"
    )
    if result["changed_config"]:
        head += f"<p>Configuration differs in: {escape(', '.join(result['changed_config']))}</p>"
    rows = []
    for scorer, entry in result["scorers"].items():
        for hp, block in [("all", entry["overall"])] + list(entry["hookpoints"].items()):
            change = block["change"]
            interval = (
                "n/a"
                if change["low"] is None
                else f"[{_fmt(change['low'], True)}, {_fmt(change['high'], True)}]"
            )
            cells = [scorer, hp, entry["metric"], _fmt(block["a"]["mean"]),
                     _fmt(block["b"]["mean"]), _fmt(change["estimate"], True), interval,
                     str(block["n_shared"]), block["verdict"]]  # fmt: skip
            rows.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
    header = "".join(
        f"<th>{h}</th>"
        for h in ("scorer", "hookpoint", "metric", "baseline", "this run", "change",
                  "interval", "shared", "verdict")
    )  # fmt: skip
    movers = "".join(
        "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in (
            m["scorer"], m["hookpoint"], m["latent"], _fmt(m["a"]), _fmt(m["b"]),
            _fmt(m["change"], True),
            {True: "yes", False: "no", None: "n/a"}[m["outside_intervals"]])) + "</tr>"
        for m in result["movers"]
    )  # fmt: skip
    return (
        "<section id='baseline-comparison'><h2>Compared with the baseline</h2>"
        f"{head}<table><tr>{header}</tr>{''.join(rows)}</table>"
        "<h3>Latents that moved most</h3><table><tr><th>scorer</th><th>hookpoint</th>"
        "<th>latent</th><th>baseline</th><th>this run</th><th>change</th>"
        f"<th>outside Wilson intervals</th></tr>{movers}</table></section>"
    )


def comparison_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers a pipeline logs as metrics: per scorer, the overall change and its bounds."""
    out: dict[str, Any] = {"n_shared_latents": result["n_shared_latents"]}
    for scorer, entry in result["scorers"].items():
        overall = entry["overall"]
        out[scorer] = {
            "baseline_mean": overall["a"]["mean"],
            "mean": overall["b"]["mean"],
            "change": overall["change"]["estimate"],
            "change_low": overall["change"]["low"],
            "change_high": overall["change"]["high"],
            "n_shared": overall["n_shared"],
        }
    return out


# ------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m autointerp_full compare",
        description="Compare the scores of two runs: changes B - A overall and per hookpoint, "
        "with bootstrap intervals over the latents both runs scored.",
    )
    parser.add_argument("run_a", metavar="RUN_A", help="run folder or latent_scores.json (before)")
    parser.add_argument("run_b", metavar="RUN_B", help="run folder or latent_scores.json (after)")
    parser.add_argument("--json", metavar="OUT", help="also write the comparison as JSON to OUT")
    parser.add_argument(
        "--top", type=int, default=DEFAULT_TOP, help=f"latents listed as moved most ({DEFAULT_TOP})"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.top < 0:
            raise UserError(f"--top: must be >= 0 (got {args.top})")
        result = compare(load_scores(args.run_a), load_scores(args.run_b), top=args.top,
                         seed=args.seed)  # fmt: skip
        print(format_comparison(result))
        if args.json:
            from autointerp_full.io import atomic_write_json

            try:
                atomic_write_json(Path(args.json), result)
            except OSError as exc:
                raise UserError(f"--json: cannot write {args.json} ({exc.strerror})") from None
            print(f"\ncomparison: {Path(args.json).resolve()}")
    except UserError as err:
        sys.stderr.write(f"autointerp_full compare: error: {' '.join(str(err).split())}\n")
        return 2
    return 0
