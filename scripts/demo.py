"""The embedded default run: SmolLM2-135M-Instruct (subject and explainer), the demo SAE, and
CPython's own documentation as the corpus. Fully offline. It writes the dashboard and prints
its path beside the table.

The latents are chosen, not the first N: ones that fire a few hundred times on this corpus and
whose strongest activations sit on one content word (scripts/pick_demo_latents.py ranked them
on the demo's own cache), so a 135M explainer has something it can name.

Extra arguments are passed on to the CLI and win over the demo's, e.g.
`python scripts/demo.py --feature_num 1 2 3` or `--max_latents 40`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEMO_SETTINGS = [
    "--hookpoints", "layers.15",
    "--n_tokens", "40960",
    "--cache_ctx_len", "256",
    "--batch_size", "16",
    "--n_splits", "4",
    "--min_examples", "20",
    "--n_examples_train", "10",
    "--n_examples_test", "5",
    "--n_non_activating", "5",
    "--example_ctx_len", "24",
    "--num_examples_per_scorer_prompt", "5",
    "--explainer_provider", "offline",
    "--explainer_model_max_len", "2048",
    "--scorers", "detection", "fuzz",
    "--enable_visualization",
]  # fmt: skip
# Chosen by scripts/pick_demo_latents.py: latents on ' statement', ' object', ' class', ' value',
# ' function', ' method', ' target', ' block' (each fires 300-700 times in the 40,960 tokens).
DEMO_LATENTS = ["2400", "3738", "2695", "959", "3803", "3893", "4011", "2045"]
# The table's own closing line says what chance is and that a capable explainer lifts the
# scores; the demo adds how to get one.
EXPLAINER_NOTE = (
    "To see what a real explainer changes, rerun with one, e.g. behind a vLLM server: "
    "python scripts/demo.py --name demo_7b --explainer_provider vllm "
    "--explainer_api_base_url http://localhost:8002/v1 --explainer_model Qwen/Qwen2.5-7B-Instruct"
)


def write_python_docs_corpus(path: Path) -> Path:
    """CPython ships its language reference topics (pydoc_data); one JSONL row per topic."""
    import pydoc_data.topics

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for title, text in sorted(pydoc_data.topics.topics.items()):
            fh.write(json.dumps({"title": title, "text": text}) + "\n")
    os.replace(tmp, path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="demo")
    parser.add_argument("--results_dir", default="results")
    args, rest = parser.parse_known_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from autointerp_full.cli import main as cli_main
    from autointerp_full.layout import RunLayout
    from autointerp_full.models import smollm2_gguf_path

    corpus = write_python_docs_corpus(Path(args.results_dir) / "corpora" / "python_docs.jsonl")
    gguf = str(smollm2_gguf_path())
    # A selection given on the command line replaces the demo's own.
    chosen = (
        [] if {"--feature_num", "--max_latents"} & set(rest) else ["--feature_num", *DEMO_LATENTS]
    )
    argv = [
        gguf,
        str(ROOT / "shared" / "demo_sae"),
        *DEMO_SETTINGS,
        *chosen,
        "--explainer_model", gguf,
        "--dataset_repo", str(corpus),
        "--dataset_split", "train",
        "--dataset_column", "text",
        "--name", args.name,
        "--results_dir", args.results_dir,
        *rest,
    ]  # fmt: skip
    code = cli_main(argv)
    if code == 0:
        print_closing(RunLayout(Path(args.results_dir) / args.name))
    return code


def print_closing(run: Any) -> None:
    """The dashboard's path and what a better explainer would change, under the table.
    `run` is the run's layout.RunLayout (imported late: the package may not be installed yet)."""
    index = run.report_html
    if index.exists():
        print(f"dashboard: {index.resolve()}  (open it in a browser; it needs no server)")
    print(EXPLAINER_NOTE)


if __name__ == "__main__":
    raise SystemExit(main())
