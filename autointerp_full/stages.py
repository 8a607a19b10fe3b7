"""One function per stage: paths in, paths out, no global state.

The CLI (run.py) calls these in order; each Kubeflow component calls exactly one. A stage writes
only into its own output folder (its usage and failure files included), and never into an
input. Every artifact records the fingerprint of what produced it (autointerp_full.provenance):
a rerun reuses an artifact whose fingerprint matches the current configuration and recomputes
the others, logging per stage how many it reused and why it recomputed the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autointerp_full import layout
from autointerp_full import provenance as prov
from autointerp_full.config import RunConfig
from autointerp_full.io import atomic_write_json, atomic_write_text, read_json
from autointerp_full.layout import LatentRange, latent_stem, select_latents
from autointerp_full.llm.bounded import run_bounded
from autointerp_full.logs import Progress

if TYPE_CHECKING:
    from autointerp_full.examples.types import LatentRecord
    from autointerp_full.llm.base import LLMClient
    from autointerp_full.prompts import Prompts
    from autointerp_full.report.summary import RunView

log = logging.getLogger(__name__)

EXPLAIN_STAGE = "explain"  # the LLM client's stage name for explanations; scorers use their own
# Threads that read the LLM stages' example files: parsing holds the interpreter lock, so more
# would only compete with the event loop; two let one file's disk wait overlap another's parse.
READER_THREADS = 2


# ---------------------------------------------------------------------------- cache


def cache_stage(cfg: RunConfig, latents_dir: Path) -> Path:
    from autointerp_full.cache import build_cache

    build_cache(cfg, Path(latents_dir))  # it rejects an empty --hookpoints
    return Path(latents_dir)


# ------------------------------------------------------------------------- examples


def examples_stage(
    cfg: RunConfig, latents_dir: Path, examples_dir: Path, latent_range: LatentRange = None
) -> Path:
    from autointerp_full.cache import CacheReader

    examples_dir = Path(examples_dir)
    examples_dir.mkdir(parents=True, exist_ok=True)
    index_path = layout.skipped_file(examples_dir)
    index = prov.read_examples_index(index_path)
    for hookpoint in cfg.hookpoints:
        reader = CacheReader(Path(latents_dir) / hookpoint)
        inputs = prov.examples_inputs(cfg, prov.cache_ref(reader.config))
        entry = _examples_for_hookpoint(cfg, reader, examples_dir, index.get(hookpoint), inputs,
                                        latent_range)  # fmt: skip
        index[hookpoint] = entry
        prov.write_examples_index(index_path, index)
    return examples_dir


def _examples_for_hookpoint(
    cfg: RunConfig,
    reader: Any,
    examples_dir: Path,
    old: prov.ExamplesEntry | None,
    inputs: dict[str, Any],
    latent_range: LatentRange,
) -> prov.ExamplesEntry:
    """Build the examples of one hookpoint that are missing or stale; return its index entry."""
    hookpoint = reader.hookpoint
    fp = prov.fingerprint(inputs)
    latents = select_latents(cfg, reader.num_latents, latent_range)
    overwrite = _overwrite_examples(cfg)
    same = old is not None and old.fingerprint == fp and not overwrite
    # Skips of another configuration are void; those of this one stand, in range or not.
    skipped = dict(old.skipped) if same and old else {}
    old_skips = old.skipped if old is not None and not same else {}
    tally = prov.Tally(f"examples {hookpoint}")
    todo: list[int] = []
    for latent in latents:
        reason = _examples_reason(cfg, examples_dir, hookpoint, latent, fp, inputs, old, skipped,
                                  old_skips, overwrite)  # fmt: skip
        if reason is None:
            tally.reuse()
        else:
            tally.recompute(reason)
            todo.append(latent)
            skipped.pop(str(latent), None)
    if todo:
        _build_examples(cfg, reader, examples_dir, latents, todo, inputs, skipped)
    tally.log()
    n_skipped = sum(1 for i in latents if str(i) in skipped)
    log.info(
        "examples %s: %d latents with examples, %d skipped (fewer than --min_examples=%d)",
        hookpoint,
        len(latents) - n_skipped,
        n_skipped,
        cfg.min_examples,
    )
    return prov.ExamplesEntry(fp, inputs, skipped)


def _overwrite_examples(cfg: RunConfig) -> str | None:
    """The --overwrite choice that rebuilds every example: `examples`, or `neighbours` with a
    source that uses them (the neighbour lists are rebuilt with the examples that need them)."""
    if "examples" in cfg.overwrite:
        return "--overwrite examples"
    if "neighbours" in cfg.overwrite and cfg.non_activating_source != "random":
        return "--overwrite neighbours"
    return None


def _examples_reason(
    cfg: RunConfig,
    examples_dir: Path,
    hookpoint: str,
    latent: int,
    fp: str,
    inputs: dict[str, Any],
    old: prov.ExamplesEntry | None,
    skipped: dict[str, int],
    old_skips: dict[str, int],
    overwrite: str | None,
) -> str | None:
    """Why this latent's examples must be built, or None when its file or skip is current."""
    from autointerp_full.examples.files import read_examples_file

    if overwrite:
        return overwrite
    if str(latent) in skipped:
        return None
    path = layout.example_file(examples_dir, hookpoint, latent)
    if path.exists():
        if prov.peek_fingerprint(path) == fp:
            return None
        try:
            recorded = prov.recorded_inputs(read_examples_file(path))
        except (OSError, ValueError):
            return "unreadable file"
        return prov.reason_changed(recorded, inputs)
    if str(latent) in old_skips and old is not None:
        return prov.reason_changed(old.inputs, inputs)
    return prov.NEW


def _build_examples(
    cfg: RunConfig,
    reader: Any,
    examples_dir: Path,
    latents: list[int],
    todo: list[int],
    inputs: dict[str, Any],
    skipped: dict[str, int],
) -> None:
    from autointerp_full.examples import ExampleBuilder
    from autointerp_full.examples.files import write_windows
    from autointerp_full.examples.types import LatentWindows

    builder = ExampleBuilder(cfg, reader, examples_dir, latents=latents)
    stamp = prov.stamp({}, inputs)

    def write(built: LatentWindows) -> None:
        path = layout.example_file(examples_dir, built.hookpoint, built.latent)
        write_windows(path, built, stamp)

    with Progress(len(todo), f"examples {reader.hookpoint}", "latent") as progress:
        # One pass over the cache's shards; --pipeline_num_proc worker processes, each
        # writing the files of the latents it builds.
        for latent, written, count in builder.write_many(todo, write):
            if not written:
                skipped[str(latent)] = int(count)
            progress.update()


@dataclass
class LoadedExamples:
    """A latent's record and the fingerprint its examples file recorded."""

    record: LatentRecord
    fingerprint: str | None


def load_examples(
    cfg: RunConfig, examples_dir: Path, latent_range: LatentRange = None
) -> list[LoadedExamples]:
    """The current example files of the run's hookpoints and latents (list_example_files),
    read now, in a stable order. A file whose fingerprint is not the one examples/skipped.json
    records for its hookpoint was made under another configuration and is left out."""
    files = list_example_files(cfg, examples_dir, latent_range)
    return [x for x in map(read_example_file, files) if x is not None]


def load_records(
    cfg: RunConfig, examples_dir: Path, latent_range: LatentRange = None
) -> list[LatentRecord]:
    """The current examples' records (see load_examples)."""
    return [x.record for x in load_examples(cfg, examples_dir, latent_range)]


@dataclass(frozen=True)
class ExampleFile:
    """A current example file, listed but not read yet (see list_example_files)."""

    path: Path
    hookpoint: str
    latent: int
    fingerprint: str | None  # the one examples/skipped.json records for the hookpoint, if any

    @property
    def key(self) -> layout.LatentKey:
        return (self.hookpoint, self.latent)


def list_example_files(
    cfg: RunConfig, examples_dir: Path, latent_range: LatentRange = None
) -> list[ExampleFile]:
    """The current example files, read no further than their heads, sorted by hookpoint and
    latent.

    The LLM stages read each file when its latent's turn comes (read_example_file), so their
    first request goes out at once rather than after every file is parsed, and memory holds
    only the latents in flight. A file is current when its fingerprint is the one skipped.json
    records for its hookpoint; it is read from the head (provenance.peek_fingerprint), and from
    the whole file where the head does not hold that fingerprint."""
    from autointerp_full.examples.files import read_examples_file

    index = prov.read_examples_index(layout.skipped_file(examples_dir))
    files, stale = [], 0
    for path, hookpoint, latent in layout.latent_files(Path(examples_dir), layout.EXAMPLE_EXT):
        if not layout.is_selected(cfg, hookpoint, latent, latent_range):
            continue
        entry = index.get(hookpoint)
        expected = entry.fingerprint if entry is not None else None
        if expected is not None and prov.peek_fingerprint(path) != expected:
            if prov.recorded_fingerprint(read_examples_file(path)) != expected:
                stale += 1
                continue
        files.append(ExampleFile(path, hookpoint, latent, expected))
    if stale:
        log.info("%d example files of another configuration left out", stale)
    files.sort(key=lambda f: (cfg.hookpoints.index(f.hookpoint), f.latent))
    return files


def read_example_file(file: ExampleFile) -> LoadedExamples | None:
    """The listed file's record and fingerprint; None if it was rewritten under another
    configuration since it was listed."""
    from autointerp_full.examples.files import read_examples_file
    from autointerp_full.examples.types import LatentRecord

    data = read_examples_file(file.path)
    fp = prov.recorded_fingerprint(data)
    if file.fingerprint is not None and fp != file.fingerprint:
        return None
    return LoadedExamples(LatentRecord.from_dict(data), fp)


# ------------------------------------------------------------------ explain & score


@dataclass
class ScoreOutcome:
    """What this invocation's score files say about failures, for the end-of-stage line."""

    latents: int = 0
    retries: int = 0
    failed_batches: int = 0
    errored: int = 0
    incomplete: int = 0

    def add(self, result: dict[str, Any]) -> None:
        metrics = result.get("metrics") or {}
        self.latents += 1
        self.retries += int(metrics.get("n_retries") or 0)
        self.failed_batches += int(metrics.get("n_failed_batches") or 0)
        if result.get("error"):
            self.errored += 1
        elif result.get("incomplete"):
            self.incomplete += 1


@dataclass
class LLMWork:
    """Explains and/or scores latents with one client, many latents in flight at once.

    `explain`: write missing or stale explanations into explanations_dir; otherwise only read
    them (the pipeline's score step, where they are an input). `score`: write score files into
    scores_dir. The CLI does both for each latent back to back, so the server never idles
    between the two stages; the pipeline runs them as separate steps.
    """

    cfg: RunConfig
    client: LLMClient
    examples_dir: Path
    explanations_dir: Path
    scores_dir: Path | None
    explain: bool
    output_dir: Path | None = None  # output profiles, which the output explainer reads
    prompts: Prompts = field(init=False)
    explain_tally: prov.Tally = field(init=False)
    score_tallies: dict[str, prov.Tally] = field(init=False)
    explain_failures: dict[str, str] = field(default_factory=dict)
    score_failures: dict[str, str] = field(default_factory=dict)
    handled: set[str] = field(default_factory=set)
    outcome: ScoreOutcome = field(default_factory=ScoreOutcome)
    _scorers: dict[str, Any] = field(default_factory=dict)
    # --null_baseline shuffled: {source latent: target latent's examples file}; see plan_nulls.
    null_targets: dict[layout.LatentKey, ExampleFile] = field(default_factory=dict)
    null_tallies: dict[str, prov.Tally] = field(default_factory=dict)
    null_outcome: ScoreOutcome = field(default_factory=ScoreOutcome)
    null_without_source: int = 0  # nulls not scored: the source's explanation is missing
    _null_scorers: dict[str, Any] = field(default_factory=dict)
    _reader: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(
            max_workers=READER_THREADS, thread_name_prefix="examples-read"
        )
    )

    def __post_init__(self) -> None:
        from autointerp_full.prompts import load_prompts

        self.prompts = load_prompts(self.cfg)
        self.explain_tally = prov.Tally(EXPLAIN_STAGE)
        self.score_tallies = {s: prov.Tally(f"score {s}") for s in self.cfg.scorers}

    @property
    def score(self) -> bool:
        return self.scores_dir is not None

    # -- explanations
    def explanation_inputs(self, item: LoadedExamples) -> dict[str, Any]:
        return prov.explanation_inputs(
            self.cfg, self.prompts, item.fingerprint, self.output_fingerprint(item.record)
        )

    def output_profile(self, record: LatentRecord) -> dict[str, Any] | None:
        """The latent's output profile (output explainer only), or None."""
        from autointerp_full.output.stage import read_profile

        if self.cfg.effective_explainer != "output":
            return None
        return read_profile(self.output_dir, record.hookpoint, record.latent)

    def output_fingerprint(self, record: LatentRecord) -> str | None:
        return prov.output_fingerprint(self.cfg, self.output_dir, record.hookpoint, record.latent)

    def read_explanation(self, record: LatentRecord) -> prov.Explanation | None:
        text_path = layout.explanation_file(self.explanations_dir, record.hookpoint, record.latent)
        if not text_path.exists():
            return None
        side = layout.explanation_provenance_file(
            self.explanations_dir, record.hookpoint, record.latent
        )
        text = text_path.read_text(encoding="utf-8")
        return prov.Explanation(text, prov.vouched_fingerprint(prov.read_json_or_none(side), text))

    def _recorded_explanation(self, record: LatentRecord) -> Any:
        side = layout.explanation_provenance_file(
            self.explanations_dir, record.hookpoint, record.latent
        )
        return prov.read_json_or_none(side)

    async def explanation(self, item: LoadedExamples) -> prov.Explanation | None:
        """The latent's current explanation: reused, read, or written now (None if it failed)."""
        record = item.record
        stem = latent_stem(record.hookpoint, record.latent)
        existing = self.read_explanation(record)
        if self.cfg.effective_explainer == "none":
            # Hand-made explanations are used as they are, whatever made them.
            if existing is None and self.explain:
                self.explain_failures[stem] = "--explainer none: no explanation on disk"
            return existing
        inputs = self.explanation_inputs(item)
        fp = prov.fingerprint(inputs)
        current = existing is not None and existing.fingerprint == fp
        if not self.explain:
            if current:
                return existing
            why = "missing" if existing is None else "made under another configuration"
            self.score_failures[stem] = f"no explanation to score (explanation {why})"
            return None
        if current and "explanations" not in self.cfg.overwrite:
            self.explain_tally.reuse()
            return existing
        reason = self._explain_reason(record, existing, inputs)
        self.explain_tally.recompute(reason)
        return await self._write_explanation(item, inputs)

    def _explain_reason(
        self, record: LatentRecord, existing: prov.Explanation | None, inputs: dict[str, Any]
    ) -> str:
        if "explanations" in self.cfg.overwrite and existing is not None:
            return "--overwrite explanations"
        if existing is None:
            return prov.NEW
        recorded = self._recorded_explanation(record)
        if prov.recorded_fingerprint(recorded) == prov.fingerprint(inputs):
            return "text not the one its provenance records"
        return prov.reason_changed(prov.recorded_inputs(recorded), inputs)

    async def _write_explanation(
        self, item: LoadedExamples, inputs: dict[str, Any]
    ) -> prov.Explanation | None:
        from autointerp_full.explainers import explain

        record = item.record
        stem = latent_stem(record.hookpoint, record.latent)
        profile = self.output_profile(record)
        result = await explain(record, self.client, self.prompts, self.cfg, output_profile=profile)
        if result.explanation is None:
            # The old explanation, if any, stays on disk; its fingerprint keeps it out of use.
            self.explain_failures[stem] = result.error or "failed"
            return None
        hp, latent = record.hookpoint, record.latent
        text = result.explanation
        # Provenance first, naming the text's hash: a kill before the text is written leaves
        # a text the record does not vouch for, and a rerun redoes it.
        side = layout.explanation_provenance_file(self.explanations_dir, hp, latent)
        atomic_write_json(side, prov.explanation_record(hp, latent, text, inputs))
        atomic_write_text(layout.explanation_file(self.explanations_dir, hp, latent), text)
        return prov.Explanation(result.explanation, prov.fingerprint(inputs))

    # -- scores
    def scorer(self, name: str) -> Any:
        from autointerp_full.scorers import SCORERS

        if name not in self._scorers:
            self._scorers[name] = SCORERS[name](self.client, self.prompts, self.cfg)
        return self._scorers[name]

    async def score_all(self, item: LoadedExamples, explanation: prov.Explanation | None) -> None:
        await asyncio.gather(
            *(self.score_one(name, item, explanation) for name in self.cfg.scorers)
        )

    async def score_one(
        self, name: str, item: LoadedExamples, explanation: prov.Explanation | None
    ) -> None:
        assert self.scores_dir is not None
        record = item.record
        scorer = self.scorer(name)
        if scorer.needs_explanation and explanation is None:
            stem = latent_stem(record.hookpoint, record.latent)
            self.score_failures.setdefault(stem, "no explanation to score")
            return
        used = explanation if scorer.needs_explanation else None
        inputs = prov.score_inputs(self.cfg, self.prompts, name, item.fingerprint, used)
        path = layout.score_file(self.scores_dir, name, record.hookpoint, record.latent)
        old = _read_score(path)
        previous, reason = self._score_decision(old, inputs)
        tally = self.score_tallies[name]
        if reason is None:
            tally.reuse()
            return
        tally.recompute(reason)
        text = used.text if used is not None else None
        result = await scorer.score(record, text, previous=previous)
        atomic_write_json(path, prov.stamp(result, inputs))
        self.outcome.add(result)

    def _score_decision(
        self, old: dict[str, Any] | None, inputs: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, str | None]:
        """(previous result to complete, reason to score) — reason None: the file is done."""
        if old is None:
            return None, prov.NEW
        if "scores" in self.cfg.overwrite:
            return None, "--overwrite scores"
        if prov.recorded_fingerprint(old) != prov.fingerprint(inputs):
            return None, prov.reason_changed(prov.recorded_inputs(old), inputs)
        if old.get("error"):
            return old, "failed before"
        if old.get("incomplete"):
            return old, "incomplete before"
        return None, None

    async def read(self, file: ExampleFile) -> LoadedExamples | None:
        """read_example_file on threads of its own. Off the event loop: at the start every
        worker reads a file, and on the loop those reads would hold back the first request.
        Not in the default executor: the structured-output probe, which the first request waits
        on, would queue there behind them."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, read_example_file, file)

    def close(self) -> None:
        self._reader.shutdown(wait=True, cancel_futures=True)

    async def run_file(self, file: ExampleFile) -> None:
        """Read the latent's examples now, when its turn comes, and work on it."""
        item = await self.read(file)
        if item is not None:
            await self.run_one(item)

    async def run_one(self, item: LoadedExamples) -> None:
        explanation = await self.explanation(item)
        self.handled.add(latent_stem(item.record.hookpoint, item.record.latent))
        if self.score:
            # This latent's explanation is also the null of the latent it was dealt to: scored
            # as soon as it exists, so no worker ever waits for another latent.
            await asyncio.gather(
                self.score_all(item, explanation), self.score_nulls(item, explanation)
            )

    # -- the shuffled null baseline
    def plan_nulls(self, files: list[ExampleFile]) -> None:
        """Deal every latent another latent's explanation (nulls.shuffled_sources, fixed by
        --seed over the latents with examples here: all of them in the CLI, the step's latent
        range in the pipeline, which is all the explanations a score step has)."""
        from autointerp_full.nulls import shuffled_sources

        if self.cfg.null_baseline != "shuffled" or not self.score or not self.null_scorer_names:
            return
        by_key = {f.key: f for f in files}
        sources = shuffled_sources(by_key, self.cfg.seed)
        self.null_targets = {source: by_key[target] for target, source in sources.items()}
        self.null_tallies = {s: prov.Tally(f"shuffled null {s}") for s in self.null_scorer_names}

    @property
    def null_scorer_names(self) -> list[str]:
        """The selected scorers that read explanations (the others have no null)."""
        from autointerp_full.scorers import SCORERS

        return [s for s in self.cfg.scorers if getattr(SCORERS[s], "needs_explanation", True)]

    def null_scorer(self, name: str) -> Any:
        """A scorer of its own for the null, whose requests are counted apart in the usage."""
        from autointerp_full.scorers import SCORERS

        if name not in self._null_scorers:
            scorer = SCORERS[name](self.client, self.prompts, self.cfg)
            with_stage = getattr(self.client, "with_stage", None)
            if callable(with_stage):
                scorer.client = with_stage(f"{name}.{layout.SHUFFLED_NULL}")
            self._null_scorers[name] = scorer
        return self._null_scorers[name]

    async def score_nulls(
        self, source: LoadedExamples, explanation: prov.Explanation | None
    ) -> None:
        key = (source.record.hookpoint, source.record.latent)
        target_file = self.null_targets.get(key)
        if target_file is None:
            return
        if explanation is None:
            self.null_without_source += 1
            return
        # Read again rather than kept from its own turn: memory holds only latents in flight.
        target = await self.read(target_file)
        if target is None:
            return
        await asyncio.gather(
            *(self.score_null(name, target, key, explanation) for name in self.null_tallies)
        )

    async def score_null(
        self,
        name: str,
        target: LoadedExamples,
        source: layout.LatentKey,
        explanation: prov.Explanation,
    ) -> None:
        """Score `target`'s examples with `source`'s explanation into scores/shuffled_null/."""
        assert self.scores_dir is not None
        record = target.record
        inputs = prov.null_score_inputs(
            self.cfg, self.prompts, name, target.fingerprint, source, explanation
        )
        path = layout.null_score_file(self.scores_dir, name, record.hookpoint, record.latent)
        previous, reason = self._score_decision(_read_score(path), inputs)
        tally = self.null_tallies[name]
        if reason is None:
            tally.reuse()
            return
        tally.recompute(reason)
        result = await self.null_scorer(name).score(record, explanation.text, previous=previous)
        result["null"] = {
            "kind": "shuffled",
            "source_hookpoint": source[0],
            "source_latent": int(source[1]),
        }
        atomic_write_json(path, prov.stamp(result, inputs))
        self.null_outcome.add(result)

    # -- bookkeeping
    def write_failures(self) -> None:
        if self.explain:
            _update_failures(self.explanations_dir, self.handled, self.explain_failures)
        if self.scores_dir is not None:
            _update_failures(self.scores_dir, self.handled, self.score_failures)

    def log_tallies(self) -> None:
        if self.explain and self.cfg.effective_explainer == "none":
            log.info("explain: --explainer none: the explanations on disk are used as they are")
        elif self.explain:
            self.explain_tally.log()
        if self.score:
            for tally in (*self.score_tallies.values(), *self.null_tallies.values()):
                tally.log()


def _read_score(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = read_json(path)
    except (OSError, json.JSONDecodeError):
        return None  # a file no one can read is simply redone
    return data if isinstance(data, dict) else None


def _update_failures(folder: Path, handled: set[str], failures: dict[str, str]) -> None:
    """Keep other latents' entries; this invocation's latents get their new outcome."""
    path = layout.failures_file(folder)
    old = prov.read_json_or_none(path)
    old = old if isinstance(old, dict) else {}
    kept = {k: v for k, v in old.items() if k not in handled}
    atomic_write_json(path, dict(sorted({**kept, **failures}.items())))


def split_usage(
    usage: dict[str, dict[str, Any]], explain: bool, score: bool
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(explain usage, score usage) of one client: the explainer records under EXPLAIN_STAGE,
    each scorer under its own name. A client that did only one stage's work gives it all.
    Stage names that counted nothing (the client's own, when only views of it asked) are left
    out."""
    usage = {k: v for k, v in usage.items() if any(v.values())}
    if not score:
        return usage, {}
    if not explain:
        return {}, usage
    explain_part = {k: v for k, v in usage.items() if k == EXPLAIN_STAGE}
    score_part = {k: v for k, v in usage.items() if k != EXPLAIN_STAGE}
    return explain_part, score_part


def record_usage(folder: Path, usage: dict[str, dict[str, Any]], seconds: float) -> None:
    """Add this invocation's token usage (per client stage: explain, detection, ...) to the totals
    kept in the stage's own folder, so a resumed run reports the whole run's usage."""
    path = layout.usage_file(folder)
    totals = prov.read_json_or_none(path)
    totals = totals if isinstance(totals, dict) else {}
    for stage, counts in usage.items():
        entry = totals.setdefault(stage, {})
        for key, value in counts.items():
            if isinstance(value, (int, float)):
                entry[key] = entry.get(key, 0) + value
    totals["wall_seconds"] = round(totals.get("wall_seconds", 0) + seconds, 3)
    atomic_write_json(path, totals)


async def llm_stages_async(
    cfg: RunConfig,
    client: LLMClient,
    examples_dir: Path,
    explanations_dir: Path,
    scores_dir: Path | None,
    latent_range: LatentRange = None,
    *,
    explain: bool = True,
    output_dir: Path | None = None,
) -> LLMWork:
    """Explain (when `explain`) and/or score (when scores_dir is given) every selected latent,
    reusing whatever is current; each stage's usage and failures go to its own folder."""
    work = LLMWork(cfg, client, Path(examples_dir), Path(explanations_dir),
                   Path(scores_dir) if scores_dir is not None else None, explain,
                   Path(output_dir) if output_dir is not None else None)  # fmt: skip
    files = list_example_files(cfg, examples_dir, latent_range)
    what = " and ".join(n for n, on in (("explain", explain), ("score", work.score)) if on)
    log.info("%s: %d latents with examples", what, len(files))
    work.plan_nulls(files)
    if work.null_targets:
        from autointerp_full.nulls import estimate_null_cost

        log.info("%s", estimate_null_cost(cfg, len(work.null_targets)).describe())
    # Enough latents in flight to keep every request slot busy.
    limit = max(2, cfg.max_concurrent_requests)
    start = time.perf_counter()
    try:
        with Progress(len(files), what, "latent") as progress:
            # Each file is read when a worker takes it (ExampleFile), not before the first
            # request.
            await run_bounded(files, work.run_file, limit, progress)
    finally:
        work.close()
        work.write_failures()
        elapsed = time.perf_counter() - start
        explain_usage, score_usage = split_usage(client.usage.as_dict(), explain, work.score)
        if explain:
            record_usage(work.explanations_dir, explain_usage, elapsed)
        if work.scores_dir is not None:
            record_usage(work.scores_dir, score_usage, elapsed)
    work.log_tallies()
    _log_failures(work, explain_usage, score_usage)
    log.info("%s: %d latents in %.1fs", what, len(files), elapsed)
    return work


def _log_failures(
    work: LLMWork, explain_usage: dict[str, dict[str, Any]], score_usage: dict[str, dict[str, Any]]
) -> None:
    """One line per LLM stage: retries, failed batches and failed latents."""

    def request_retries(usage: dict[str, dict[str, Any]]) -> int:
        return sum(int(v.get("retries", 0)) for v in usage.values() if isinstance(v, dict))

    if work.explain:
        log.info(
            "explain: %d request retries, %d latents failed (listed in %s)",
            request_retries(explain_usage),
            len(work.explain_failures),
            layout.failures_file(work.explanations_dir),
        )
    if work.score:
        o = work.outcome
        log.info(
            "score: %d score files written; %d answer retries, %d request retries, %d failed "
            "batches, %d failed latents (%d errored, %d incomplete), %d latents without an "
            "explanation",
            o.latents,
            o.retries,
            request_retries(score_usage),
            o.failed_batches,
            o.errored + o.incomplete,
            o.errored,
            o.incomplete,
            len(work.score_failures),
        )
    if work.null_tallies:
        o = work.null_outcome
        log.info(
            "shuffled null: %d null score files written; %d answer retries, %d failed "
            "batches, %d failed latents (%d errored, %d incomplete), %d latents without a null "
            "(the explanation dealt to them is missing)",
            o.latents,
            o.retries,
            o.failed_batches,
            o.errored + o.incomplete,
            o.errored,
            o.incomplete,
            work.null_without_source,
        )


def _run_llm(
    cfg: RunConfig,
    stage: str,
    examples_dir: Path,
    explanations_dir: Path,
    scores_dir: Path | None,
    latent_range: LatentRange,
    explain: bool,
    output_dir: Path | None = None,
) -> None:
    from autointerp_full.llm import make_client

    async def main() -> None:
        client = make_client(cfg, stage)
        try:
            await llm_stages_async(cfg, client, examples_dir, explanations_dir, scores_dir,
                                   latent_range, explain=explain,
                                   output_dir=output_dir)  # fmt: skip
        finally:
            await client.aclose()

    asyncio.run(main())


def explain_stage(
    cfg: RunConfig,
    examples_dir: Path,
    explanations_dir: Path,
    latent_range: LatentRange = None,
    *,
    output_dir: Path | None = None,
) -> Path:
    """`output_dir`: the output stage's profiles, read by the output explainer."""
    Path(explanations_dir).mkdir(parents=True, exist_ok=True)
    _run_llm(cfg, EXPLAIN_STAGE, examples_dir, explanations_dir, None, latent_range, True,
             output_dir)  # fmt: skip
    return Path(explanations_dir)


def score_stage(
    cfg: RunConfig,
    examples_dir: Path,
    explanations_dir: Path,
    scores_dir: Path,
    latent_range: LatentRange = None,
    *,
    output_dir: Path | None = None,
) -> Path:
    """Score latents; explanations are read from `explanations_dir`, never written there.
    `output_dir`: the output profiles, which vouch for the output explainer's explanations."""
    Path(scores_dir).mkdir(parents=True, exist_ok=True)
    _run_llm(cfg, "score", examples_dir, explanations_dir, scores_dir, latent_range, False,
             output_dir)  # fmt: skip
    return Path(scores_dir)


def explain_and_score_stage(
    cfg: RunConfig,
    examples_dir: Path,
    explanations_dir: Path,
    scores_dir: Path,
    latent_range: LatentRange = None,
    *,
    output_dir: Path | None = None,
) -> tuple[Path, Path]:
    """The CLI's explain and score: each latent is scored as soon as it is explained, through one
    client; the usage is still split, explain's into explanations/ and score's into scores/."""
    Path(explanations_dir).mkdir(parents=True, exist_ok=True)
    Path(scores_dir).mkdir(parents=True, exist_ok=True)
    _run_llm(cfg, EXPLAIN_STAGE, examples_dir, explanations_dir, scores_dir, latent_range, True,
             output_dir)  # fmt: skip
    return Path(explanations_dir), Path(scores_dir)


# --------------------------------------------------------------------------- output


def output_stage(
    cfg: RunConfig, examples_dir: Path, output_dir: Path, latent_range: LatentRange = None
) -> Path:
    """Output profiles (logit lens, steering) of the selected latents, when the run uses them
    (the output explainer or an output-side scorer); otherwise nothing is done or loaded."""
    from autointerp_full.output import needs_output_profile
    from autointerp_full.output.stage import run_output_stage

    if not needs_output_profile(cfg):
        return Path(output_dir)
    return run_output_stage(cfg, Path(examples_dir), Path(output_dir), latent_range)


# --------------------------------------------------------------------------- report


def report_stage(cfg: RunConfig, run_dir: Path, *, view: RunView | None = None) -> Path:
    """summary.json and, with --enable_visualization, the dashboard. The run folder is read
    once (load_run reads every examples head, explanation and score file) and that view feeds
    both; a caller that also prints the table passes its own `view` to share it too."""
    from autointerp_full.report import write_summary
    from autointerp_full.report.summary import load_run

    run = layout.RunLayout(Path(run_dir))
    if view is None:
        view = load_run(run.root, cfg)
    usage: dict[str, Any] = {}
    for stage, folder in (("explain", run.explanations), ("score", run.scores)):
        recorded = prov.read_json_or_none(layout.usage_file(folder))
        if isinstance(recorded, dict):
            usage[stage] = recorded
    write_summary(run.root, cfg, extra={"llm_usage": usage}, view=view)
    if cfg.enable_visualization:
        from autointerp_full.report import write_html_report

        # Writing summary.json changes nothing load_run reads, so the view is still current.
        write_html_report(run.root, cfg, view=view)
    return run.summary


def dump_config(cfg: RunConfig, run_dir: Path) -> Path:
    """Write run_config.json (no secrets); an earlier, different one is kept beside it."""
    run = layout.RunLayout(Path(run_dir))
    path = run.run_config
    new = cfg.public_dict()
    if path.exists():
        old = read_json(path)
        if old != new:
            n = 1
            while run.old_run_config(n).exists():
                n += 1
            path.rename(run.old_run_config(n))
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            log.info(
                "configuration changed (%s); previous kept as %s",
                ", ".join(changed),
                run.old_run_config(n).name,
            )
    atomic_write_json(path, new)
    return path


__all__ = [
    "cache_stage",
    "examples_stage",
    "explain_stage",
    "score_stage",
    "explain_and_score_stage",
    "report_stage",
    "output_stage",
    "dump_config",
    "load_examples",
    "load_records",
    "select_latents",
]
