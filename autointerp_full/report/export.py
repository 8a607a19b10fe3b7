"""`python -m autointerp_full export RUN`: a finished run's results in other tools' formats.

- `latents.csv`: one row per latent: explanation, each scorer's headline metric (with its Wilson
  interval and answer count where the scorer counts right answers), firing rate, and flags for
  failed or incomplete scores.
- `latents.jsonl`: a first line describing the run (configuration, summary), then one line per
  latent with everything a dashboard needs: the examples (tokens, token strings, activations),
  the explanation, every score file (each example's prediction) and the fingerprints that say
  which configuration made them.
- `neuronpedia/<model>/<source>/`: Neuronpedia's export layout (model, source and source set
  records; features, activations and explanations as gzipped JSONL batches), which a
  Neuronpedia instance loads from its admin panel. The record fields follow Neuronpedia's own
  `neuronpedia_utils/db_models` (https://github.com/hijohnnylin/neuronpedia, under
  utils/neuronpedia-utils) and its export docs (https://docs.neuronpedia.org/api-and-data/exports).

Only the artifacts of the run's own configuration count (report.summary.load_run), as in
summary.json. Every file is written atomically. Torch-free.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autointerp_full import layout
from autointerp_full.cli import OneLineParser
from autointerp_full.errors import UserError

EXPORT_DIR = "export"  # results/<name>/export/, the default output folder
CSV_FILE = "latents.csv"
JSONL_FILE = "latents.jsonl"
NEURONPEDIA_DIR = "neuronpedia"
FORMATS = ("csv", "jsonl", "neuronpedia")
JSONL_VERSION = 1
NP_BATCH = 1024  # features per Neuronpedia batch file
NP_SOURCE_SET = "autointerp"
NP_CREATOR_ENV = "NEURONPEDIA_CREATOR_ID"  # the Neuronpedia user id the records name
NP_DEFAULT_CREATOR = "autointerp-full"


# ---------------------------------------------------------------------------- the run
@dataclass
class LatentEntry:
    """What the run holds for one latent (current artifacts only)."""

    hookpoint: str
    latent: int
    record: dict[str, Any] | None  # the examples file, fingerprint and inputs left out
    examples_fingerprint: str | None
    explanation: str | None
    explanation_fingerprint: str | None
    explanation_failure: str | None
    scores: dict[str, dict[str, Any]]  # scorer -> score file
    # --null_baseline shuffled: scorer -> the score file with another latent's explanation.
    nulls: dict[str, dict[str, Any]]


@dataclass
class RunData:
    root: Path
    config: dict[str, Any]
    scorers: list[str]
    summary: dict[str, Any] | None
    latents: list[LatentEntry]
    null_scorers: list[str]  # scorers with a null baseline in this run


def _read(path: Path) -> Any:
    from autointerp_full.io import read_json

    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None


def load_run_data(run_dir: Path) -> RunData:
    """The current artifacts of a run folder, per latent."""
    from autointerp_full import provenance as prov
    from autointerp_full.config import RunConfig
    from autointerp_full.report.summary import load_run

    run = layout.RunLayout(Path(run_dir))
    if not run.root.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if not run.run_config.is_file():
        raise UserError(f"{run_dir}: not a run folder (no {layout.RUN_CONFIG})")
    config = _read(run.run_config)
    try:
        cfg = RunConfig.from_dict(config)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{run.run_config}: {exc}") from None
    view = load_run(run.root, cfg)
    summary = _read(run.summary) if run.summary.is_file() else None
    keys = view.latent_keys()
    latents = []
    for key in keys:
        record = fp = None
        if key in view.examples:
            data = _read(view.examples[key])
            fp = prov.recorded_fingerprint(data)
            record = {k: v for k, v in data.items() if k not in ("fingerprint", "inputs")}
        side = prov.read_json_or_none(layout.explanation_provenance_file(run.explanations, *key))
        latents.append(
            LatentEntry(
                hookpoint=key[0],
                latent=key[1],
                record=record,
                examples_fingerprint=fp,
                explanation=view.explanations.get(key),
                explanation_fingerprint=prov.recorded_fingerprint(side)
                if key in view.explanations
                else None,
                explanation_failure=view.explanation_failures.get(key),
                scores={s: files[key] for s, files in view.scores.items() if key in files},
                nulls={s: files[key] for s, files in view.nulls.items() if key in files},
            )
        )
    nulled = [s for s in cfg.scorers if s in view.nulls]
    return RunData(run.root, config, list(cfg.scorers), summary, latents, nulled)


# -------------------------------------------------------------------------------- CSV
def csv_columns(scorers: Sequence[str], null_scorers: Sequence[str] = ()) -> list[str]:
    """The CSV header: per scorer its headline metric, interval bounds, answered count, error,
    and the null baseline's value of the same metric where the run has one."""
    from autointerp_full.compare import COUNTED_SCORERS
    from autointerp_full.scorers import HEADLINE_METRIC

    columns = ["hookpoint", "latent", "explanation", "explanation_error", "n_activating",
               "firing_rate", "max_activation"]  # fmt: skip
    for scorer in scorers:
        metric = f"{scorer}_{HEADLINE_METRIC.get(scorer, 'accuracy')}"
        columns.append(metric)
        if scorer in COUNTED_SCORERS:
            columns += [f"{metric}_low", f"{metric}_high", f"{scorer}_n_answered"]
        if scorer in null_scorers:
            columns.append(f"{metric}_null")
        columns += [f"{scorer}_error"]
    return columns + ["incomplete"]


def csv_row(
    entry: LatentEntry, scorers: Sequence[str], null_scorers: Sequence[str] = ()
) -> dict[str, Any]:
    from autointerp_full.compare import COUNTED_SCORERS, latent_score
    from autointerp_full.scorers import HEADLINE_METRIC
    from autointerp_full.stats import wilson_interval

    record = entry.record or {}
    row: dict[str, Any] = {
        "hookpoint": entry.hookpoint,
        "latent": entry.latent,
        "explanation": entry.explanation if entry.explanation is not None else "",
        "explanation_error": entry.explanation_failure or "",
        "n_activating": record.get("n_activating", ""),
        "firing_rate": record.get("firing_rate", ""),
        "max_activation": record.get("max_activation", ""),
    }
    incomplete = False
    for scorer in scorers:
        metric = f"{scorer}_{HEADLINE_METRIC.get(scorer, 'accuracy')}"
        data = entry.scores.get(scorer)
        score = latent_score(scorer, data) if data is not None else None
        row[metric] = "" if score is None or score.value is None else score.value
        if scorer in COUNTED_SCORERS:
            low = high = ""
            if score is not None and score.answered:
                interval = wilson_interval(score.right or 0, score.answered)
                low, high = interval.low, interval.high
            row[f"{metric}_low"], row[f"{metric}_high"] = low, high
            row[f"{scorer}_n_answered"] = "" if score is None else score.answered
        if scorer in null_scorers:
            null = entry.nulls.get(scorer)
            value = latent_score(scorer, null).value if null is not None else None
            row[f"{metric}_null"] = "" if value is None else value
        # A latent never scored by this scorer says so, rather than leaving a blank.
        row[f"{scorer}_error"] = "not scored" if score is None else (score.error or "")
        incomplete = incomplete or bool(score and score.incomplete)
    row["incomplete"] = incomplete
    return row


def csv_text(data: RunData) -> str:
    buffer = io.StringIO()
    columns = csv_columns(data.scorers, data.null_scorers)
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for entry in data.latents:
        writer.writerow(csv_row(entry, data.scorers, data.null_scorers))
    return buffer.getvalue()


# ------------------------------------------------------------------------------ JSONL
def jsonl_lines(data: RunData) -> Iterator[str]:
    yield json.dumps(
        {
            "kind": "run",
            "version": JSONL_VERSION,
            "run": data.config.get("name") or data.root.name,
            "config": data.config,
            "summary": data.summary,
            "n_latents": len(data.latents),
        }
    )
    for entry in data.latents:
        yield json.dumps(
            {
                "kind": "latent",
                "hookpoint": entry.hookpoint,
                "latent": entry.latent,
                "explanation": entry.explanation,
                "explanation_error": entry.explanation_failure,
                "examples": entry.record,
                "scores": entry.scores,
                "null_scores": entry.nulls,
                "provenance": {
                    "examples": entry.examples_fingerprint,
                    "explanation": entry.explanation_fingerprint,
                    "scores": {s: f.get("fingerprint") for s, f in entry.scores.items()},
                },
            }
        )


# ------------------------------------------------------------------------- Neuronpedia
@dataclass(frozen=True)
class NeuronpediaOptions:
    model_id: str | None = None  # None: from the run's model (np_model_id)
    source_set: str = NP_SOURCE_SET
    creator_id: str = NP_DEFAULT_CREATOR


def np_model_id(model: str) -> str:
    """A Neuronpedia-style model id from a hub id or path: 'HuggingFaceTB/SmolLM2-135M' ->
    'smollm2-135m' (the last part, lower case, a .gguf suffix and quantisation left out)."""
    name = Path(str(model).rstrip("/")).name
    name = re.sub(r"\.gguf$", "", name, flags=re.IGNORECASE)
    name = re.sub(r"\.(q\d\w*|f16|f32|bf16)$", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-") or "model"


def np_source_id(hookpoint: str, source_set: str) -> str:
    """Neuronpedia names a source '<layer>-<set>' ('15-autointerp'); the rest of the hookpoint
    after the layer number joins the set name ('layers.3.mlp' -> '3-autointerp-mlp')."""
    match = re.search(r"(\d+)", hookpoint)
    if match is None:
        return f"{re.sub(r'[^a-z0-9]+', '-', hookpoint.lower()).strip('-')}-{source_set}"
    rest = re.sub(r"[^a-z0-9]+", "-", hookpoint[match.end() :].lower()).strip("-")
    return f"{match.group(1)}-{source_set}" + (f"-{rest}" if rest else "")


def _record_id(*parts: Any) -> str:
    """A stable 25-character id (Neuronpedia uses cuids): the same run exports the same ids."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode("utf-8")).hexdigest()
    return "c" + digest[:24]


def _np_activation(entry: LatentEntry, where: dict, example: dict, i: int, now: str) -> dict:
    values = [float(v) for v in example.get("activations") or []]
    top = max(range(len(values)), key=values.__getitem__) if values else 0
    return {
        "id": _record_id(where["modelId"], where["layer"], entry.latent, "activation", i),
        **where,
        "tokens": list(example.get("str_tokens") or []),
        "values": values,
        "maxValue": max(values) if values else 0.0,
        "maxValueTokenIndex": top,
        "minValue": min(values) if values else 0.0,
        "dataSource": "autointerp-full",
        "dataIndex": None,
        "createdAt": now,
    }


def _score_notes(entry: LatentEntry) -> str:
    """The scores as one line of text, for the explanation's notes."""
    from autointerp_full.compare import latent_score
    from autointerp_full.scorers import HEADLINE_METRIC

    parts = []
    for scorer, data in sorted(entry.scores.items()):
        score = latent_score(scorer, data)
        metric = HEADLINE_METRIC.get(scorer, "accuracy")
        if score.value is None:
            parts.append(f"{scorer} {metric}: failed")
        else:
            n = f" (n={score.answered})" if score.answered is not None else ""
            parts.append(f"{scorer} {metric} {score.value:.3f}{n}")
    return "autointerp-full scores: " + ("; ".join(parts) if parts else "none")


def neuronpedia_records(data: RunData, opts: NeuronpediaOptions) -> dict[str, dict[str, Any]]:
    """{source_id: {"source": ..., "features": [...], "activations": [...], "explanations":
    [...]}} in Neuronpedia's export records."""
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    explainer = np_model_id(str(data.config.get("explainer_model") or "unknown"))
    kind = f"autointerp-full-{data.config.get('explainer') or 'default'}"
    out: dict[str, dict[str, Any]] = {}
    for entry in data.latents:
        source = np_source_id(entry.hookpoint, opts.source_set)
        where = {"modelId": opts.model_id, "layer": source, "index": str(entry.latent)}
        block = out.setdefault(
            source,
            {"hookpoint": entry.hookpoint, "features": [], "activations": [], "explanations": []},
        )
        record = entry.record or {}
        windows = [e for e in record.get("train", []) + record.get("test", [])
                   if e.get("quantile", 0) >= 0]  # fmt: skip
        windows.sort(key=lambda e: -max(e.get("activations") or [0.0]))
        acts = [_np_activation(entry, where, e, i, now) for i, e in enumerate(windows)]
        block["features"].append(
            {
                **where,
                "creatorId": opts.creator_id,
                "createdAt": now,
                "maxActApprox": float(record.get("max_activation") or 0.0),
                "frac_nonzero": float(record.get("firing_rate") or 0.0),
                "hasVector": False,
                "hookName": entry.hookpoint,
            }
        )
        block["activations"] += [{**a, "creatorId": opts.creator_id} for a in acts]
        if entry.explanation:
            block["explanations"].append(
                {
                    "id": _record_id(opts.model_id, source, entry.latent, "explanation"),
                    **where,
                    "description": entry.explanation,
                    "authorId": opts.creator_id,
                    "typeName": kind,
                    "explanationModelName": explainer,
                    "notes": _score_notes(entry),
                    "createdAt": now,
                }
            )
    return out


def _jsonl_gz(rows: list[dict[str, Any]]) -> bytes:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    return gzip.compress(text.encode("utf-8"), compresslevel=5, mtime=0)


def _write_bytes(path: Path, payload: bytes) -> None:
    from autointerp_full.io import atomic_write

    atomic_write(path, lambda tmp: tmp.write_bytes(payload))


def write_neuronpedia(data: RunData, out_dir: Path, opts: NeuronpediaOptions) -> list[Path]:
    """Neuronpedia's export layout under out_dir/<model id>/<source id>/."""
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    written = []
    for source, block in neuronpedia_records(data, opts).items():
        folder = Path(out_dir) / opts.model_id / source
        singles = {
            "model.jsonl": {"id": opts.model_id, "instruct": False, "creatorId": opts.creator_id,
                            "displayName": str(data.config.get("model") or opts.model_id),
                            "displayNameShort": opts.model_id, "createdAt": now,
                            "updatedAt": now},
            "sourceset.jsonl": {"modelId": opts.model_id, "name": opts.source_set,
                                "creatorId": opts.creator_id, "creatorName": "autointerp-full",
                                "description": f"autointerp-full run {data.config.get('name')}",
                                "visibility": "PRIVATE", "hasDashboards": True,
                                "createdAt": now},
            "source.jsonl": {"id": source, "modelId": opts.model_id, "setName": opts.source_set,
                             "creatorId": opts.creator_id, "hasDashboards": True,
                             "inferenceEnabled": False, "visibility": "PRIVATE",
                             "hfRepoId": None, "notes": f"hookpoint {block['hookpoint']} of "
                             f"{data.config.get('sparse_model')}", "createdAt": now},
        }  # fmt: skip
        for name, row in singles.items():
            _write_bytes(folder / name, (json.dumps(row) + "\n").encode("utf-8"))
            written.append(folder / name)
        features = block["features"]
        for b, start in enumerate(range(0, len(features), NP_BATCH)):
            chunk = features[start : start + NP_BATCH]
            indices = {f["index"] for f in chunk}
            parts = {
                "features": chunk,
                "activations": [a for a in block["activations"] if a["index"] in indices],
                "explanations": [e for e in block["explanations"] if e["index"] in indices],
            }
            for kind, rows in parts.items():
                path = folder / kind / f"batch-{b}.jsonl.gz"
                _write_bytes(path, _jsonl_gz(rows))
                written.append(path)
    return written


# ---------------------------------------------------------------------------- export
def export_run(
    run_dir: Path,
    out_dir: Path | None = None,
    formats: Sequence[str] = FORMATS,
    neuronpedia: NeuronpediaOptions | None = None,
) -> dict[str, Path]:
    """Write the chosen formats into out_dir (default run_dir/export); returns their paths."""
    from autointerp_full.io import atomic_write, atomic_write_text

    bad = sorted(set(formats) - set(FORMATS))
    if bad:
        raise UserError(f"--formats: unknown format(s) {', '.join(bad)}; choose from "
                        f"{', '.join(FORMATS)}")  # fmt: skip
    data = load_run_data(Path(run_dir))
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / EXPORT_DIR
    paths: dict[str, Path] = {}
    if "csv" in formats:
        paths["csv"] = out / CSV_FILE
        atomic_write_text(paths["csv"], csv_text(data))
    if "jsonl" in formats:
        paths["jsonl"] = out / JSONL_FILE

        def write_lines(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                for line in jsonl_lines(data):
                    fh.write(line + "\n")

        atomic_write(paths["jsonl"], write_lines)
    if "neuronpedia" in formats:
        opts = neuronpedia or NeuronpediaOptions()
        if opts.model_id is None:
            opts = dataclasses.replace(opts, model_id=np_model_id(str(data.config.get("model"))))
        paths["neuronpedia"] = out / NEURONPEDIA_DIR
        write_neuronpedia(data, paths["neuronpedia"], opts)
    return paths


# ------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m autointerp_full export",
        description="Export a run's latents as CSV, JSONL and Neuronpedia's export format.",
    )
    parser.add_argument("run", metavar="RUN", help="the run folder (results/<name>)")
    parser.add_argument("--out", help=f"output folder (default: RUN/{EXPORT_DIR})")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), metavar="FORMAT",
                        help=f"any of {', '.join(FORMATS)} (default: all)")  # fmt: skip
    parser.add_argument("--np_model_id", help="Neuronpedia model id (default: from the model)")
    parser.add_argument("--np_source_set", default=NP_SOURCE_SET,
                        help=f"Neuronpedia source set name (default: {NP_SOURCE_SET})")  # fmt: skip
    parser.add_argument(
        "--np_creator_id",
        default=os.environ.get(NP_CREATOR_ENV, NP_DEFAULT_CREATOR),
        help=f"the Neuronpedia user id the records name (default: ${NP_CREATOR_ENV}, "
        f"else {NP_DEFAULT_CREATOR})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for name in ("np_model_id", "np_source_set", "np_creator_id"):
            value = getattr(args, name)
            if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
                raise UserError(f"--{name}: letters, digits, '.', '_' and '-' only (got {value!r})")
        opts = NeuronpediaOptions(args.np_model_id, args.np_source_set, args.np_creator_id)
        paths = export_run(Path(args.run), Path(args.out) if args.out else None, args.formats,
                           opts)  # fmt: skip
    except OSError as exc:
        sys.stderr.write(f"autointerp_full export: error: cannot write ({exc})\n")
        return 2
    except UserError as err:
        sys.stderr.write(f"autointerp_full export: error: {' '.join(str(err).split())}\n")
        return 2
    for kind, path in paths.items():
        print(f"{kind}: {path.resolve()}")
    return 0
