"""Run every explainer, scorer and non-activating source once on the demo model.

It reuses the activation cache of a finished `make demo` run (copied, never modified), takes a
few latents, and prints one line per option with its outcome. Usage:

    python scripts/check_options.py --demo_run results/demo --latents 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

OPTIONS: list[list[str]] = [
    ["--explainer", "default"],
    ["--explainer", "single_token"],
    ["--explainer", "contrastive"],
    ["--explainer", "np_max_act"],
    ["--explainer", "cot"],
    ["--non_activating_source", "neighbours", "--neighbours_type", "co-occurrence"],
    ["--non_activating_source", "neighbours", "--neighbours_type", "decoder_similarity"],
    ["--non_activating_source", "neighbours", "--neighbours_type", "encoder_similarity"],
    ["--non_activating_source", "FAISS"],
    ["--scorers", "simulation", "surprisal", "embedding", "intruder"],
    ["--scorers", "detection", "--log_probs", "--enable_visualization"],
    ["--explainer", "output", "--scorers", "intervention", "output_detection"],
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--demo_run", default="results/demo")
    parser.add_argument("--results_dir", default="results/options")
    parser.add_argument("--latents", type=int, default=2)
    args = parser.parse_args()

    from demo import DEMO_SETTINGS

    from autointerp_full.cache.format import CONFIG_FILE
    from autointerp_full.cli import main as cli_main
    from autointerp_full.layout import RunLayout
    from autointerp_full.models import smollm2_gguf_path

    demo = RunLayout(Path(args.demo_run))
    cache = demo.latents
    if not (demo.cache("layers.15") / CONFIG_FILE).exists():
        sys.exit(f"--demo_run: no finished demo cache in {cache}; run `make demo` first")
    gguf = str(smollm2_gguf_path())
    # The demo's own corpus path, so that its cache key matches and the cache is reused.
    corpus = json.loads((demo.cache("layers.15") / CONFIG_FILE).read_text())["dataset_repo"]
    settings = [a for a in DEMO_SETTINGS]
    settings[settings.index("--max_latents") + 1] = str(args.latents + 1)  # latent 2 is skipped
    rows = []
    for i, option in enumerate(OPTIONS):
        name = f"option_{i}"
        run = RunLayout(Path(args.results_dir) / name)
        if not run.latents.exists():
            shutil.copytree(cache, run.latents)
        argv = [
            gguf, str(ROOT / "shared" / "demo_sae"), *settings,
            "--explainer_model", gguf, "--dataset_repo", str(corpus),
            "--dataset_split", "train", "--name", name, "--results_dir", args.results_dir,
            *option,
        ]  # fmt: skip
        if "--scorers" in option:
            scorers_at = argv.index("--scorers")
            del argv[scorers_at : scorers_at + 3]  # the demo's "detection fuzz"
        start = time.perf_counter()
        code = cli_main(argv)
        summary = json.loads(run.summary.read_text()) if code == 0 else {}
        scored = {
            scorer: block["overall"]["n_scored"]
            for scorer, block in summary.get("scorers", {}).items()
        }
        rows.append((" ".join(option), code, scored, time.perf_counter() - start))
    print("\noption | exit | latents scored per scorer | seconds")
    for option, code, scored, seconds in rows:
        print(f"{option} | {code} | {scored} | {seconds:.0f}")
    return 0 if all(code == 0 for _, code, _, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
