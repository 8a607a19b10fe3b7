"""The embedded default run: SmolLM2-135M-Instruct (subject and explainer), the demo SAE, and
CPython's own documentation as the corpus. Fully offline; about 10 minutes on 2 CPU cores.

Extra arguments are passed on to the CLI, e.g. `python scripts/demo.py --max_latents 40`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEMO_SETTINGS = [
    "--hookpoints", "layers.15",
    "--n_tokens", "40960",
    "--cache_ctx_len", "256",
    "--batch_size", "16",
    "--n_splits", "4",
    "--max_latents", "28",
    "--min_examples", "20",
    "--n_examples_train", "10",
    "--n_examples_test", "5",
    "--n_non_activating", "5",
    "--example_ctx_len", "24",
    "--num_examples_per_scorer_prompt", "5",
    "--explainer_provider", "offline",
    "--explainer_model_max_len", "2048",
    "--scorers", "detection", "fuzz",
]  # fmt: skip


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
    from autointerp_full.models import smollm2_gguf_path

    corpus = write_python_docs_corpus(Path(args.results_dir) / "corpora" / "python_docs.jsonl")
    gguf = str(smollm2_gguf_path())
    argv = [
        gguf,
        str(ROOT / "shared" / "demo_sae"),
        *DEMO_SETTINGS,
        "--explainer_model", gguf,
        "--dataset_repo", str(corpus),
        "--dataset_split", "train",
        "--dataset_column", "text",
        "--name", args.name,
        "--results_dir", args.results_dir,
        *rest,
    ]  # fmt: skip
    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
