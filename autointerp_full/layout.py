"""The run folder `results/<name>/`: every path and file name in it, per-latent file stems, and
the latent selection. No other module spells these names.

Torch-free and import-light (the CLI, the schema checks and the pipeline's plan step use it).
The inside of `latents/<hookpoint>/` (shards, tokens, the cache's config.json) belongs to the
cache's own format module, `autointerp_full.cache.format`.

```
results/<name>/
  run_config.json                          RUN_CONFIG
  latents/<hookpoint>/                     the activation cache (cache.format)
  examples/<hookpoint>_latent_<id>.json    example_file()
  examples/skipped.json                    SKIPPED
  examples/neighbours/<hookpoint>.json     neighbours_dir(): neighbour lists, FAISS embeddings
  explanations/<hookpoint>_latent_<id>.txt explanation_file()
  explanations/provenance/<stem>.json      explanation_provenance_file()
  explanations/failures.json, .usage.json  the explain stage's bookkeeping
  scores/<scorer>/<hookpoint>_latent_<id>.txt  score_file()
  scores/shuffled_null/<scorer>/<stem>.txt null_score_file(): --null_baseline shuffled
  scores/failures.json, .usage.json        the score stage's bookkeeping
  output/<hookpoint>_latent_<id>.json      output_file(): output profile (logit lens, steering)
  summary.json                             SUMMARY
  report/index.html                        REPORT_DIR / REPORT_HTML: the dashboard
  report/standalone.html                   REPORT_STANDALONE: its index in one file, for KFP
```
Each stage writes only into its own folder; its usage and failure files live there too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autointerp_full.errors import UserError

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig

LatentRange = tuple[int, int] | None
LatentKey = tuple[str, int]

# Top-level names of the run folder.
RUN_CONFIG = "run_config.json"
LATENTS = "latents"
EXAMPLES = "examples"
EXPLANATIONS = "explanations"
SCORES = "scores"
SUMMARY = "summary.json"
OUTPUT = "output"  # output/<hookpoint>_latent_<id>.json: a latent's output profile (issue 13)
REPORT_DIR = "report"
REPORT_HTML = "index.html"
# report/standalone.html: the dashboard's index as one self-contained page (KFP's HTML artifact).
REPORT_STANDALONE = "standalone.html"

# Files beside the per-latent files of a stage folder.
SKIPPED = "skipped.json"  # examples/: latents with too few activating windows
NEIGHBOURS = "neighbours"  # examples/neighbours/: the non-activating sources' own cache
PROVENANCE = "provenance"  # explanations/provenance/<stem>.json: what made each explanation
USAGE = ".usage.json"  # a stage's LLM token usage, summed over invocations
FAILURES = "failures.json"  # a stage's failed latents: {stem: message}
# Null baseline scores (--null_baseline shuffled): scores/shuffled_null/<scorer>/<stem>.txt.
SHUFFLED_NULL = "shuffled_null"
NULL_DIRS = (SHUFFLED_NULL,)
# Bookkeeping files that have no schema of their own and are merged when shards are assembled.
BOOKKEEPING = (SKIPPED, USAGE, FAILURES)

EXAMPLE_EXT = ".json"
OUTPUT_EXT = ".json"
EXPLANATION_EXT = ".txt"
SCORE_EXT = ".txt"

_STEM = re.compile(r"^(?P<hookpoint>.+)_latent_(?P<latent>[0-9]+)$")


# ------------------------------------------------------------------------------ stems
def latent_stem(hookpoint: str, latent: int) -> str:
    """'layers.16_latent_7': the name of a latent's files, before the extension."""
    return f"{hookpoint}_latent_{latent}"


def parse_stem(stem: str) -> LatentKey | None:
    """('layers.16', 7) from 'layers.16_latent_7'; None for a name that is not per-latent."""
    match = _STEM.match(stem)
    if not match:
        return None
    return match["hookpoint"], int(match["latent"])


def latent_files(folder: Path, ext: str) -> Iterator[tuple[Path, str, int]]:
    """(path, hookpoint, latent) of each per-latent file `<stem><ext>` in `folder`, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix != ext or not path.is_file():
            continue
        key = parse_stem(path.stem)
        if key is not None:
            yield path, key[0], key[1]


# ------------------------------------------------------------------ files in a stage folder
def example_file(examples_dir: Path, hookpoint: str, latent: int) -> Path:
    return Path(examples_dir) / f"{latent_stem(hookpoint, latent)}{EXAMPLE_EXT}"


def skipped_file(examples_dir: Path) -> Path:
    return Path(examples_dir) / SKIPPED


def neighbours_dir(examples_dir: Path) -> Path:
    """Where the non-activating sources keep neighbour lists and FAISS embeddings: inside the
    examples stage's own output, so that the stage writes nowhere else."""
    return Path(examples_dir) / NEIGHBOURS


def explanation_file(explanations_dir: Path, hookpoint: str, latent: int) -> Path:
    return Path(explanations_dir) / f"{latent_stem(hookpoint, latent)}{EXPLANATION_EXT}"


def explanation_provenance_file(explanations_dir: Path, hookpoint: str, latent: int) -> Path:
    return Path(explanations_dir) / PROVENANCE / f"{latent_stem(hookpoint, latent)}.json"


def output_file(output_dir: Path, hookpoint: str, latent: int) -> Path:
    """A latent's output profile (logit lens and steering), made by the output stage."""
    return Path(output_dir) / f"{latent_stem(hookpoint, latent)}{OUTPUT_EXT}"


def score_dir(scores_dir: Path, scorer: str) -> Path:
    return Path(scores_dir) / scorer


def score_file(scores_dir: Path, scorer: str, hookpoint: str, latent: int) -> Path:
    return score_dir(scores_dir, scorer) / f"{latent_stem(hookpoint, latent)}{SCORE_EXT}"


def scorer_dirs(scores_dir: Path) -> list[Path]:
    """One folder per scorer under scores/ (hidden folders and the null scores left out)."""
    folder = Path(scores_dir)
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in NULL_DIRS
    )


# -------------------------------------------------------------------- null baseline scores
def null_dir(scores_dir: Path, kind: str = SHUFFLED_NULL) -> Path:
    """scores/shuffled_null/: the null baseline's score files, one folder per scorer inside,
    so that no reader of scores/ takes the null for a scorer of its own."""
    return Path(scores_dir) / kind


def null_score_dir(scores_dir: Path, scorer: str, kind: str = SHUFFLED_NULL) -> Path:
    return null_dir(scores_dir, kind) / scorer


def null_score_file(
    scores_dir: Path, scorer: str, hookpoint: str, latent: int, kind: str = SHUFFLED_NULL
) -> Path:
    """The null score of a latent: its examples scored with another latent's explanation."""
    stem = latent_stem(hookpoint, latent)
    return null_score_dir(scores_dir, scorer, kind) / f"{stem}{SCORE_EXT}"


def null_scorer_dirs(scores_dir: Path, kind: str = SHUFFLED_NULL) -> list[Path]:
    """One folder per scorer under scores/shuffled_null/ (hidden folders left out)."""
    folder = null_dir(scores_dir, kind)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def usage_file(stage_dir: Path) -> Path:
    return Path(stage_dir) / USAGE


def failures_file(stage_dir: Path) -> Path:
    return Path(stage_dir) / FAILURES


# ------------------------------------------------------------------------- the run folder
@dataclass(frozen=True)
class RunLayout:
    """The folders and files of one run folder, `results/<name>/`."""

    root: Path

    @classmethod
    def of(cls, cfg: RunConfig) -> RunLayout:
        return cls(Path(cfg.results_dir) / cfg.run_name)

    @property
    def run_config(self) -> Path:
        return self.root / RUN_CONFIG

    def old_run_config(self, n: int) -> Path:
        """Where an earlier, different run_config.json is kept: run_config.<n>.json."""
        return self.root / f"{Path(RUN_CONFIG).stem}.{n}{Path(RUN_CONFIG).suffix}"

    @property
    def latents(self) -> Path:
        return self.root / LATENTS

    def cache(self, hookpoint: str) -> Path:
        return self.latents / hookpoint

    @property
    def examples(self) -> Path:
        return self.root / EXAMPLES

    @property
    def explanations(self) -> Path:
        return self.root / EXPLANATIONS

    @property
    def scores(self) -> Path:
        return self.root / SCORES

    @property
    def output(self) -> Path:
        return self.root / OUTPUT

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def report_dir(self) -> Path:
        return self.root / REPORT_DIR

    @property
    def report_html(self) -> Path:
        return self.report_dir / REPORT_HTML

    @property
    def report_standalone(self) -> Path:
        return self.report_dir / REPORT_STANDALONE


# ------------------------------------------------------------------------ latent selection
def select_latents(cfg: RunConfig, num_latents: int, latent_range: LatentRange = None) -> list[int]:
    """The latents a run analyses: --feature_num, else 0..--max_latents-1, else all."""
    if cfg.feature_num:
        bad = [i for i in cfg.feature_num if i >= num_latents]
        if bad:
            raise UserError(
                f"--feature_num: latent(s) {bad} out of range; the sparse model has "
                f"{num_latents} latents"
            )
        latents = sorted(set(cfg.feature_num))
    else:
        latents = list(range(min(cfg.max_latents or num_latents, num_latents)))
    return [i for i in latents if in_range(i, latent_range)]


def in_range(latent: int, latent_range: LatentRange) -> bool:
    return latent_range is None or latent_range[0] <= latent < latent_range[1]


def is_selected(
    cfg: RunConfig, hookpoint: str, latent: int, latent_range: LatentRange = None
) -> bool:
    """Whether a latent's file belongs to the run's selection (the rule of select_latents, for
    when the sparse model's width is not at hand)."""
    if hookpoint not in cfg.hookpoints:
        return False
    if cfg.feature_num:
        if latent not in cfg.feature_num:
            return False
    elif cfg.max_latents and latent >= cfg.max_latents:
        return False
    return in_range(latent, latent_range)
