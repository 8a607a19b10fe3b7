"""Choose the latents `make demo` explains: ones that fire often enough for full example sets
and whose strongest activations sit on a few distinct tokens, so that even a small explainer
has something clear to name. Run once on the demo's cache; scripts/demo.py keeps the result.

    python scripts/pick_demo_latents.py results/demo/latents/layers.15 --n 10
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

# Function words: latents on them are real but make a dull first impression.
FUNCTION_WORDS = set(
    "that then when where with will this were have from which what there their they them "
    "than also same used must each into only such does been".split()
)


def score_latents(cache: Path, min_count: int, max_rate: float, top: int) -> list[tuple]:
    """(clarity, nameable, n_activating, latent, top tokens) per latent that fires between
    min_count times and max_rate of the tokens, best first; clarity is the share of its `top`
    strongest activations that fall on its three most common tokens."""
    import numpy as np
    from transformers import AutoTokenizer

    from autointerp_full.cache.reader import CacheReader

    reader = CacheReader(cache)
    model = Path(reader.config["model"])
    if model.suffix == ".gguf":  # the demo's model: its tokenizer lives inside the GGUF file
        tokenizer = AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(reader.config["tokenizer"])
    tokens = reader.tokens().numpy()
    counts = reader.firing_counts().numpy()
    n_tokens = tokens.size
    out = []
    for latent in np.flatnonzero((counts >= min_count) & (counts <= max_rate * n_tokens)):
        locations, activations = reader.latent(int(latent))
        order = np.argsort(-activations.numpy())[:top]
        rows = locations.numpy()[order]
        ids = tokens[rows[:, 0], rows[:, 1]]
        common = Counter(int(i) for i in ids).most_common(3)
        clarity = sum(n for _, n in common) / len(ids)
        words = [tokenizer.decode([i]) for i, _ in common]
        # A content word is something a small explainer can name and a reader recognise.
        word = words[0].strip().lower()
        nameable = word.isalpha() and len(word) >= 4 and word not in FUNCTION_WORDS
        out.append((round(clarity, 1), nameable, int(counts[latent]), int(latent), words))
    ranked = sorted(out, reverse=True)
    # One latent per strongest token, so the demo shows different kinds of latents.
    seen: set[str] = set()
    distinct = []
    for row in ranked:
        word = row[4][0].strip().lower()
        if word not in seen:
            seen.add(word)
            distinct.append(row)
    return distinct


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("cache", type=Path, help="the demo cache, results/<name>/latents/<hook>")
    parser.add_argument("--n", type=int, default=10, help="latents to choose")
    parser.add_argument("--min_count", type=int, default=200, help="activations at least")
    parser.add_argument("--max_rate", type=float, default=0.02, help="firing rate at most")
    parser.add_argument("--top", type=int, default=50, help="strongest activations looked at")
    args = parser.parse_args()
    ranked = score_latents(args.cache, args.min_count, args.max_rate, args.top)
    for clarity, _, n, latent, words in ranked[: args.n * 2]:
        print(f"{latent:5d}  n={n:6d}  clarity={clarity:.1f}  top tokens {words}")
    chosen = sorted(row[3] for row in ranked[: args.n])
    print("--feature_num " + " ".join(map(str, chosen)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
