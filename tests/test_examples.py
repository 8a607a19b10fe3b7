"""Example windows, quantile sampling, and the non-activating sources, on hand-made caches."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autointerp_full.config import RunConfig
from autointerp_full.examples import (
    ExampleBuilder,
    TokenDecoder,
    build_latent_record,
    build_records,
    make_non_activating_source,
)
from autointerp_full.examples import neighbours as nb
from autointerp_full.examples.samplers import equal_shares, latent_rng, sample_train_test
from autointerp_full.examples.types import Example, LatentRecord
from autointerp_full.examples.windows import (
    LatentActivations,
    centred_windows,
    fixed_windows,
    inactive_blocks,
)
from autointerp_full.layout import neighbours_dir

HOOK = "layers.1"


class FakeReader:
    """A CacheReader stand-in built from a dense activation tensor [n_rows, ctx, L]."""

    def __init__(self, tokens: np.ndarray, dense: np.ndarray, hookpoint: str = HOOK) -> None:
        self._tokens = torch.as_tensor(tokens, dtype=torch.int32)
        self.dense = np.asarray(dense, np.float32)
        self.hookpoint = hookpoint
        self.num_latents = self.dense.shape[2]
        self.config = {"hookpoint": hookpoint, "num_latents": self.num_latents, "n": len(tokens)}
        self.reads = 0

    def tokens(self) -> torch.Tensor:
        return self._tokens

    def latent(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        rows, pos = np.nonzero(self.dense[:, :, i])
        locations = torch.as_tensor(np.stack([rows, pos], 1), dtype=torch.long)
        return locations, torch.as_tensor(self.dense[rows, pos, i])

    def firing_counts(self) -> torch.Tensor:
        return torch.as_tensor((self.dense != 0).sum(axis=(0, 1)), dtype=torch.long)


class WordTokenizer:
    """Word-level tokenizer: id i is VOCAB[i] with a leading space."""

    def __init__(self, vocab: list[str]) -> None:
        self.vocab = vocab

    def decode(self, ids: list[int]) -> str:
        return "".join(" " + self.vocab[i] for i in ids)

    def convert_ids_to_tokens(self, i: int) -> str:
        return self.vocab[i]


VOCAB = [f"w{i}" for i in range(50)]


def cfg_for(**changes: object) -> RunConfig:
    base = dict(
        min_examples=5,
        n_examples_train=10,
        n_examples_test=10,
        n_non_activating=6,
        example_ctx_len=8,
        cache_ctx_len=64,
        seed=3,
    )
    base.update(changes)
    return RunConfig(**base)  # type: ignore[arg-type]


def random_cache(
    n_rows: int = 40, ctx: int = 64, n_latents: int = 6, density: float = 0.05, seed: int = 0
) -> FakeReader:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, len(VOCAB), size=(n_rows, ctx))
    fires = rng.random((n_rows, ctx, n_latents)) < density
    dense = np.where(fires, rng.gamma(2.0, 1.0, size=fires.shape) + 0.1, 0.0)
    return FakeReader(tokens, dense)


def window_is_zero(reader: FakeReader, latent: int, example: Example) -> bool:
    return all(a == 0 for a in example.activations)


def find_window(reader: FakeReader, example: Example) -> tuple[int, int]:
    """Locate an example's (row, start) in the cache by its tokens."""
    tokens = reader.tokens().numpy()
    n = len(example.tokens)
    for r in range(tokens.shape[0]):
        for s in range(tokens.shape[1] - n + 1):
            if tokens[r, s : s + n].tolist() == example.tokens:
                return r, s
    raise AssertionError("window not found")


# ------------------------------------------------------------------------- windows


def acts_of(points: list[tuple[int, int, float]], ctx: int) -> LatentActivations:
    locs = [(r, p) for r, p, _ in points]
    return LatentActivations(torch.tensor(locs), torch.tensor([a for *_, a in points]), ctx)


def test_centred_windows_centre_on_peaks_and_never_overlap() -> None:
    acts = acts_of([(0, 10, 5.0), (0, 11, 3.0), (0, 40, 4.0), (0, 62, 2.0), (1, 0, 1.0)], 64)
    w = centred_windows(acts, 8)
    got = sorted(zip(w.rows.tolist(), w.starts.tolist(), w.scores.tolist(), strict=False))
    # pos 11 lies inside the pos-10 window; pos 62 clamps to the row end, pos 0 to its start.
    assert got == [(0, 6, 5.0), (0, 36, 4.0), (0, 56, 2.0), (1, 0, 1.0)]


def test_centred_windows_shift_into_gap_or_skip() -> None:
    # Peak at 10 takes [6, 14); pos 15 cannot centre (would start at 11) so shifts to 14.
    acts = acts_of([(0, 10, 5.0), (0, 15, 4.0), (0, 20, 3.0)], 64)
    w = centred_windows(acts, 8)
    assert sorted(w.starts.tolist()) == [6, 14]  # pos 20 is inside [14, 22)
    spans = sorted((s, s + 8) for s in w.starts.tolist())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    # A peak squeezed between two windows with no room for a full window is dropped.
    acts = acts_of([(0, 4, 9.0), (0, 18, 8.0), (0, 11, 1.0)], 24)
    w = centred_windows(acts, 8)
    assert sorted(w.starts.tolist()) == [0, 14]  # pos 11's gap [8, 14) is too small


def test_fixed_windows_are_aligned_blocks_scored_by_max() -> None:
    acts = acts_of([(0, 10, 1.0), (0, 12, 3.0), (0, 63, 2.0), (2, 20, 0.5), (1, 66, 7.0)], 70)
    w = fixed_windows(acts, 16)  # 4 blocks per 70-token row; the 6-token tail is no block
    got = sorted(zip(w.rows.tolist(), w.starts.tolist(), w.scores.tolist(), strict=False))
    assert got == [(0, 0, 3.0), (0, 48, 2.0), (2, 16, 0.5)]


def test_window_activations_and_inactive_blocks() -> None:
    acts = acts_of([(1, 3, 2.0), (1, 9, 1.0)], 16)
    assert acts.window_activations(1, 2, 8).tolist() == [0, 2, 0, 0, 0, 0, 0, 1]
    rows, starts = inactive_blocks(acts, n_rows=2, length=8)
    assert sorted(zip(rows.tolist(), starts.tolist(), strict=False)) == [(0, 0), (0, 8)]


# ------------------------------------------------------------------------ sampling


def test_quantile_sampling_spreads_evenly_and_is_disjoint() -> None:
    scores = np.arange(1, 201, dtype=np.float32)
    train, test = sample_train_test(scores, 40, 50, np.random.default_rng(0))
    assert len(train) == 40 and len(test) == 50
    assert np.bincount([q for _, q in train], minlength=10).tolist() == [4] * 10
    assert np.bincount([q for _, q in test], minlength=10).tolist() == [5] * 10
    assert not {i for i, _ in train} & {i for i, _ in test}
    for i, q in train + test:  # bin q holds ranks 20q .. 20q+19
        assert q == i // 20
    assert [scores[i] for i, _ in train] == sorted((scores[i] for i, _ in train), reverse=True)


def test_equal_shares_redistribute_shortfall() -> None:
    assert equal_shares([1, 10, 10], 12) == [1, 5, 6]
    assert equal_shares([2, 2], 10) == [2, 2]
    assert sum(equal_shares([3] * 10, 7)) == 7


def test_few_windows_split_between_train_and_test() -> None:
    train, test = sample_train_test(np.arange(9.0), 10, 10, np.random.default_rng(0))
    assert len(train) + len(test) == 9 and train and test
    assert not {i for i, _ in train} & {i for i, _ in test}


def test_strongest_train_takes_the_top_windows_and_tests_on_the_rest() -> None:
    scores = np.random.default_rng(1).permutation(np.arange(1, 201, dtype=np.float32))
    train, test = sample_train_test(scores, 10, 50, np.random.default_rng(0), strongest_train=True)
    assert [float(scores[i]) for i, _ in train] == [float(v) for v in range(200, 190, -1)]
    assert all(q == 9 for _, q in train)  # the top bin
    assert not {i for i, _ in train} & {i for i, _ in test} and len(test) == 50
    # Test still spreads over every quantile, drawn from what train left.
    assert set(q for _, q in test) == set(range(10))
    # The default is unchanged: train spreads over the quantiles too.
    default_train, default_test = sample_train_test(scores, 10, 50, np.random.default_rng(0))
    assert len({q for _, q in default_train}) == 10


def test_np_max_act_explains_from_the_strongest_windows() -> None:
    from autointerp_full.explainers import build_messages
    from autointerp_full.prompts import default_prompts

    reader = random_cache(n_rows=80, density=0.08)
    tok = WordTokenizer(VOCAB)
    windows = centred_windows(LatentActivations(*reader.latent(4), 64), 8)
    top = sorted(windows.scores.tolist(), reverse=True)[:10]
    cfg = cfg_for(explainer="np_max_act", n_examples_train=10)
    record = build_latent_record(reader, 4, cfg, tok)
    assert record is not None
    assert [e.max_activation for e in record.train] == pytest.approx(top, rel=1e-3)
    assert min(e.max_activation for e in record.train) >= max(e.max_activation for e in record.test)
    # Examples built for another explainer keep the quantile-stratified train set.
    other = build_latent_record(reader, 4, cfg_for(n_examples_train=10), tok)
    assert other is not None
    assert sorted(e.max_activation for e in other.train) != pytest.approx(sorted(top), rel=1e-3)
    messages, _ = build_messages(record, default_prompts(), cfg)
    assert messages[-1]["content"].count("<<") >= 10


# ------------------------------------------------------------------------- records


def test_record_contents_match_the_cache() -> None:
    reader = random_cache()
    cfg = cfg_for()
    record = build_latent_record(reader, 2, cfg, WordTokenizer(VOCAB), non_activating_source=None)
    assert record is not None
    assert len(record.train) == 10 and len(record.test) == 10 and record.non_activating == []
    dense = reader.dense[:, :, 2]
    assert record.max_activation == pytest.approx(dense.max(), rel=1e-5)
    assert record.firing_rate == pytest.approx((dense > 0).mean())
    for example in record.train + record.test:
        r, s = find_window(reader, example)
        assert example.activations == pytest.approx(dense[r, s : s + 8].tolist(), abs=1e-4)
        assert example.str_tokens == [" " + VOCAB[t] for t in example.tokens]
        assert 0 <= example.quantile < 10 and max(example.activations) > 0
    again = LatentRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record


def test_too_few_windows_is_skipped_with_count() -> None:
    reader = random_cache(density=0.002)
    cfg = cfg_for(min_examples=50)
    builder = ExampleBuilder(cfg, reader, None, tokenizer=WordTokenizer(VOCAB), latents=[0])
    assert builder.build(0) is None
    n_windows = len(centred_windows(LatentActivations(*reader.latent(0), 64), 8))
    assert builder.last_count == n_windows < 50
    out = list(build_records(reader, [0, 1], cfg, WordTokenizer(VOCAB)))
    assert [(latent, record) for latent, record, _ in out] == [(0, None), (1, None)]


def test_seeded_and_independent_of_order(tmp_path: Path) -> None:
    reader = random_cache()
    tok = WordTokenizer(VOCAB)

    def run(latents: list[int], seed: int) -> dict[int, dict]:
        cfg = cfg_for(seed=seed)
        return {
            latent: record.to_dict()
            for latent, record, _ in build_records(
                reader, latents, cfg, tok, examples_dir=tmp_path / "ex"
            )
            if record is not None
        }

    forward, backward = run([0, 1, 2, 3], 3), run([3, 2, 1, 0], 3)
    assert forward == backward and len(forward) == 4
    other = run([0, 1, 2, 3], 4)
    assert other[0]["train"] != forward[0]["train"]
    assert latent_rng(1, "a", 2).integers(1 << 30) == latent_rng(1, "a", 2).integers(1 << 30)


def test_fixed_mode_records() -> None:
    reader = random_cache()
    record = build_latent_record(reader, 1, cfg_for(center_examples=False), WordTokenizer(VOCAB))
    assert record is not None
    for example in record.train + record.test:
        assert find_window(reader, example)[1] % 8 == 0


# ------------------------------------------------------------------ non-activating


def test_random_source_windows_are_zero() -> None:
    reader = random_cache(density=0.1)
    cfg = cfg_for(n_non_activating=12)
    record = ExampleBuilder(cfg, reader, None, tokenizer=WordTokenizer(VOCAB)).build(0)
    assert record is not None and len(record.non_activating) == 12
    seen = set()
    for example in record.non_activating:
        r, s = find_window(reader, example)
        assert not reader.dense[r, s : s + 8, 0].any()
        assert example.quantile == -1 and window_is_zero(reader, 0, example)
        seen.add((r, s))
    assert len(seen) == 12


def cofiring_cache() -> FakeReader:
    """Latent 1 co-fires with latent 0 on every other firing, and fires alone elsewhere;
    latent 2 is independent; latent 3 never fires."""
    rng = np.random.default_rng(5)
    n_rows, ctx = 60, 64
    tokens = rng.integers(0, len(VOCAB), size=(n_rows, ctx))
    dense = np.zeros((n_rows, ctx, 4), np.float32)
    for r in range(0, 30):
        p = int(rng.integers(0, ctx))
        dense[r, p, 0] = 1.0 + rng.random()
        if r % 2 == 0:
            dense[r, p, 1] = 3.0
    for r in range(30, 45):
        dense[r, int(rng.integers(0, ctx)), 1] = 5.0 + rng.random()
    for r in rng.choice(n_rows, 20, replace=False):
        dense[r, int(rng.integers(0, ctx)), 2] = 1.0
    return FakeReader(tokens, dense)


def test_cooccurrence_neighbours_and_windows(tmp_path: Path) -> None:
    reader = cofiring_cache()
    lists = nb.cooccurrence_neighbours(reader, [0, 3], 64)
    assert lists[0][0][0] == 1 and lists[0][0][1] == pytest.approx(15 / (30 + 30 - 15))
    assert all(m != 0 for m, _ in lists[0]) and lists[3] == []
    cfg = cfg_for(non_activating_source="neighbours", n_non_activating=10, min_examples=5)
    builder = ExampleBuilder(
        cfg, reader, tmp_path / "ex", tokenizer=WordTokenizer(VOCAB), latents=[0]
    )
    record = builder.build(0)
    assert record is not None and len(record.non_activating) == 10
    hard = 0
    for example in record.non_activating:
        r, s = find_window(reader, example)
        assert not reader.dense[r, s : s + 8, 0].any()
        hard += bool(reader.dense[r, s : s + 8, 1].any())
    assert hard == 10  # latent 1 fires alone in 15 rows: enough hard negatives
    # Random windows rarely contain latent 1 (15 firings in 480 blocks).
    rand = ExampleBuilder(
        cfg_for(n_non_activating=10), reader, None, tokenizer=WordTokenizer(VOCAB)
    ).build(0)
    assert rand is not None
    assert (
        sum(
            bool(reader.dense[r, s : s + 8, 1].any())
            for r, s in map(lambda e: find_window(reader, e), rand.non_activating)
        )
        < 5
    )
    saved = json.loads((neighbours_dir(tmp_path / "ex") / f"{HOOK}.json").read_text())
    assert saved["co-occurrence"]["latents"]["0"][0][0] == 1


class FakeCoder:
    def __init__(self, w_enc: np.ndarray, w_dec: np.ndarray) -> None:
        self.W_enc, self.W_dec = torch.as_tensor(w_enc), torch.as_tensor(w_dec)


@pytest.mark.parametrize("kind", ["decoder_similarity", "encoder_similarity"])
def test_similarity_neighbours(kind: str) -> None:
    reader = cofiring_cache()
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 16)).astype(np.float32)
    near = base.copy()
    near[2] = base[0] + 0.05 * rng.normal(size=16)  # latent 2 points like latent 0
    near[3] = base[0]  # even closer, but latent 3 never fires: no use as a neighbour
    other = base.copy()
    coder = FakeCoder(
        near if kind == "encoder_similarity" else other,
        near if kind == "decoder_similarity" else other,
    )
    cfg = cfg_for(non_activating_source="neighbours", neighbours_type=kind, n_non_activating=8)
    source = make_non_activating_source(
        cfg,
        reader,
        reader.tokens().numpy(),
        WordTokenizer(VOCAB),
        latents=[0],
        cache_dir=None,
        sparse_coder=coder,
    )
    assert source.neighbours[0][0][0] == 2
    assert all(m != 3 for m, _ in source.neighbours[0])
    record = ExampleBuilder(
        cfg, reader, None, tokenizer=WordTokenizer(VOCAB), latents=[0], sparse_coder=coder
    ).build(0)
    assert record is not None
    for example in record.non_activating:
        r, s = find_window(reader, example)
        assert not reader.dense[r, s : s + 8, 0].any()
    # Every window shows a neighbour firing, the closest (latent 2) first; round-robin over
    # neighbours keeps the list varied.
    spots = [find_window(reader, e) for e in record.non_activating]
    assert reader.dense[spots[0][0], spots[0][1] : spots[0][1] + 8, 2].any()
    assert all(reader.dense[r, s : s + 8, 1:3].any() for r, s in spots)


def test_neighbour_cache_reuse_and_overwrite(tmp_path: Path, monkeypatch) -> None:
    reader = cofiring_cache()
    calls: list[list[int]] = []
    real = nb.cooccurrence_neighbours

    def spy(r, latents, ctx, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(list(latents))
        return real(r, latents, ctx, *a, **k)

    monkeypatch.setattr(nb, "cooccurrence_neighbours", spy)
    cfg = cfg_for(non_activating_source="neighbours")
    tokens = reader.tokens().numpy()

    def make(c: RunConfig, latents: list[int]):  # type: ignore[no-untyped-def]
        return make_non_activating_source(
            c, reader, tokens, WordTokenizer(VOCAB), latents=latents, cache_dir=tmp_path
        )

    first = make(cfg, [0, 1])
    second = make(cfg, [0, 1])
    assert calls == [[0, 1]] and first.neighbours == second.neighbours
    make(cfg, [0, 1, 2])  # only the new latent is computed
    assert calls[-1] == [2]
    make(dataclasses.replace(cfg, overwrite=["neighbours"]), [0, 1])
    assert calls[-1] == [0, 1]
    # A different cache (other key) is not reused.
    reader.config = {**reader.config, "n": -1}
    make(cfg, [0])
    assert calls[-1] == [0]


def test_token_decoder_cleans_byte_level_markers() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=280,
        special_tokens=["<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(["the cat sat on a mat", "a cat and a dog"] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    ids = tok("the cat sat on a mat", add_special_tokens=False)["input_ids"]
    pieces = TokenDecoder(tok).str_tokens(ids)
    assert "".join(pieces) == "the cat sat on a mat"
    assert not any("Ġ" in p for p in pieces)


# ----------------------------------------------------------------------------- FAISS

needs_faiss = pytest.mark.skipif(
    importlib.util.find_spec("faiss") is None
    or importlib.util.find_spec("sentence_transformers") is None,
    reason="needs the faiss extra",
)

TOPICS = {
    "animals": "the cat chased the dog across the farm while the horse ate hay near the cow",
    "finance": "the bank raised interest rates and the stock market fell as investors sold "
    "their bonds today",
    "code": "the python function returns a list and the class imports a module to parse json files",
}


@needs_faiss
def test_faiss_picks_semantically_nearest(tmp_path: Path) -> None:
    words = sorted({w for text in TOPICS.values() for w in text.split()})
    tok = WordTokenizer(words)
    ids = {t: [words.index(w) for w in text.split()][:16] for t, text in TOPICS.items()}
    # 30 rows of 16 tokens: 10 per topic. The latent fires on "cat" in 6 animal rows only.
    rows = []
    for t in TOPICS:
        for _ in range(10):
            rows.append(ids[t])
    tokens = np.array(rows)
    dense = np.zeros((30, 16, 1), np.float32)
    for r in range(6):
        dense[r, 1, 0] = 2.0 + r
    reader = FakeReader(tokens, dense)
    cfg = cfg_for(
        non_activating_source="FAISS",
        example_ctx_len=16,
        cache_ctx_len=16,
        min_examples=3,
        n_examples_train=3,
        n_examples_test=3,
        n_non_activating=4,
    )
    builder = ExampleBuilder(
        cfg, reader, tmp_path / "ex", tokenizer=tok, latents=[0], faiss_pool_size=30
    )
    record = builder.build(0)
    assert record is not None and len(record.non_activating) == 4
    for example in record.non_activating:
        assert example.tokens == ids["animals"] and not any(example.activations)
    # The pool embeddings are cached and reused.
    cached = list(neighbours_dir(tmp_path / "ex").glob(f"{HOOK}.faiss.*.npy"))
    assert len(cached) == 1
    from autointerp_full.embeddings import load_embedder

    real = load_embedder(cfg.faiss_embedding_model)
    encoded: list[int] = []

    class Counting:
        name = real.name

        def encode(self, texts: list[str]) -> np.ndarray:
            encoded.append(len(texts))
            return real.encode(texts)

    again = ExampleBuilder(
        cfg,
        reader,
        tmp_path / "ex",
        tokenizer=tok,
        latents=[0],
        faiss_pool_size=30,
        embedder=Counting(),
    )
    assert again.build(0) == record
    assert encoded == [6]  # only the latent's 3 + 3 activating windows; the pool came from disk
    # Random negatives are spread over the topics instead.
    rand = ExampleBuilder(
        dataclasses.replace(cfg, non_activating_source="random", n_non_activating=12),
        reader,
        None,
        tokenizer=tok,
    ).build(0)
    assert rand is not None
    assert any(e.tokens != ids["animals"] for e in rand.non_activating)


# ------------------------------------------------------------------------ embeddings


def test_embedder_model_resolution(tmp_path: Path) -> None:
    from autointerp_full.embeddings import bundled_minilm_path, resolve_model

    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("org/other-model") == "org/other-model"
    bundled = bundled_minilm_path()
    if bundled is not None:
        assert (bundled / "modules.json").exists()
        for name in ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"):
            assert resolve_model(name) == str(bundled)


def test_missing_extras_raise_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import autointerp_full.embeddings as emb
    import autointerp_full.examples.faiss_source as fs
    from autointerp_full.errors import MissingExtraError

    real = importlib.util.find_spec

    def hide(*names: str):  # type: ignore[no-untyped-def]
        return lambda name, *a: None if name in names else real(name, *a)

    monkeypatch.setattr(emb.importlib.util, "find_spec", hide("sentence_transformers"))
    with pytest.raises(MissingExtraError, match=r"sentence-transformers.*\[faiss\]"):
        emb.load_embedder.__wrapped__("all-MiniLM-L6-v2")
    monkeypatch.setattr(fs.importlib.util, "find_spec", hide("faiss"))
    with pytest.raises(
        MissingExtraError, match=r"--non_activating_source FAISS needs the .faiss-cpu."
    ):
        fs.build_index(np.ones((2, 4), np.float32))


@needs_faiss
def test_embedder_is_normalised_and_semantic() -> None:
    from autointerp_full.embeddings import load_embedder

    embedder = load_embedder("sentence-transformers/all-MiniLM-L6-v2")
    vectors = embedder.encode(["a small cat", "a little kitten", "bond yields rose"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert embedder.encode([]).shape == (0, 384)


def test_contrastive_explainer_gets_its_own_windows() -> None:
    """The windows a contrastive prompt shows are never among the scored ones."""
    from autointerp_full.explainers import build_messages
    from autointerp_full.prompts import default_prompts

    reader = random_cache(density=0.1)
    cfg = cfg_for(n_non_activating=6, explainer="contrastive")
    record = ExampleBuilder(cfg, reader, None, tokenizer=WordTokenizer(VOCAB)).build(0)
    assert record is not None
    assert len(record.non_activating) == 6 and len(record.contrast) == len(record.train)
    scored = {find_window(reader, e) for e in record.non_activating}
    shown = {find_window(reader, e) for e in record.contrast}
    assert not scored & shown
    assert all(window_is_zero(reader, 0, e) for e in record.contrast)
    messages, _ = build_messages(record, default_prompts(), cfg)
    text = "\n".join(m["content"] for m in messages)
    assert record.contrast[0].text.strip() in text
    again = LatentRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record
    tokenizer = WordTokenizer(VOCAB)
    plain = ExampleBuilder(cfg_for(n_non_activating=6), reader, None, tokenizer=tokenizer)
    assert plain.build(0).contrast == []


# ------------------------------------------------------------------ real cache, one pass
def write_real_cache(folder: Path, reader: FakeReader, n_splits: int = 2) -> Path:
    """The FakeReader's dense activations as a real format-2 cache folder (no model)."""
    from autointerp_full.cache.format import FORMAT_VERSION, shard_bounds, shard_name, token_code
    from autointerp_full.cache.runs import Run
    from autointerp_full.cache.tensorio import save_run, save_tokens

    folder.mkdir(parents=True)
    tokens = reader.tokens()
    n_seqs, ctx = tokens.shape
    save_tokens(folder / "tokens.safetensors", tokens, token_code(len(VOCAB)))
    dense = reader.dense.reshape(n_seqs * ctx, -1)
    shards = []
    for i, (start, end) in enumerate(shard_bounds(reader.num_latents, n_splits)):
        flat = [np.flatnonzero(dense[:, j]) for j in range(start, end)]
        counts = torch.tensor([0] + [len(f) for f in flat]).cumsum(0)
        run = Run(
            latents=torch.cat([torch.full((len(f),), j, dtype=torch.int32) for j, f in
                               zip(range(start, end), flat, strict=True)]),
            flat=torch.from_numpy(np.concatenate(flat).astype(np.int64)),
            values=torch.from_numpy(np.concatenate(
                [dense[f, j] for j, f in zip(range(start, end), flat, strict=True)]
            ).astype(np.float16)),
        )  # fmt: skip
        save_run(folder / shard_name(i), run, counts, n_seqs * ctx, start, end)
        shards.append({"file": shard_name(i), "start": start, "end": end, "n": len(run.flat)})
    config = {
        "hookpoint": HOOK, "num_latents": reader.num_latents, "n_seqs": n_seqs, "ctx_len": ctx,
        "vocab_size": len(VOCAB), "format": FORMAT_VERSION, "shards": shards,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def loop_centred_windows(acts: LatentActivations, length: int) -> tuple[list, list, list]:
    """The original one-activation-at-a-time centred windows: the vectorised one's oracle."""
    import bisect

    ctx = acts.ctx_len
    taken: dict[int, list[int]] = {}
    rows, starts_out = [], []
    for i in np.argsort(-acts.values, kind="stable").tolist():
        row, pos = int(acts.rows[i]), int(acts.positions[i])
        starts = taken.setdefault(row, [])
        k = bisect.bisect_right(starts, pos)
        if k and pos < starts[k - 1] + length:
            continue
        lo = starts[k - 1] + length if k else 0
        hi = starts[k] if k < len(starts) else ctx
        if hi - lo < length:
            continue
        start = min(max(pos - length // 2, lo), hi - length)
        starts.insert(k, start)
        rows.append(row)
        starts_out.append(start)
    scores = []
    for row, start in zip(rows, starts_out, strict=True):
        inside = (acts.flat >= row * ctx + start) & (acts.flat < row * ctx + start + length)
        scores.append(float(acts.values[inside].max()))
    return rows, starts_out, scores


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_centred_windows_equal_the_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ctx = [16, 33, 64, 256, 8, 64][seed]
    mask = rng.random((30, ctx)) < [0.02, 0.3, 0.9, 0.1, 1.0, 0.5][seed]
    flat = np.flatnonzero(mask)
    values = rng.random(len(flat)).astype(np.float32)
    if seed % 2:  # many ties
        values = rng.choice(np.float32([0.5, 1.0, 2.0]), len(flat))
    acts = LatentActivations.from_flat(flat, values, ctx)
    for length in (1, 3, 8, ctx):
        got = centred_windows(acts, length)
        rows, starts, scores = loop_centred_windows(acts, min(length, ctx))
        assert got.rows.tolist() == rows and got.starts.tolist() == starts
        assert got.scores.tolist() == scores


def test_one_pass_and_forked_records_equal_per_latent_reads(tmp_path: Path) -> None:
    from autointerp_full.cache import CacheReader

    fake = random_cache(n_rows=60, n_latents=9, density=0.08, seed=4)
    fake.dense = fake.dense.astype(np.float16).astype(np.float32)  # what the cache stores
    real = CacheReader(write_real_cache(tmp_path / "cache", fake, n_splits=3))
    tok = WordTokenizer(VOCAB)
    latents = list(range(9))

    def records(reader, **changes) -> list:
        cfg = cfg_for(**changes)
        builder = ExampleBuilder(cfg, reader, None, tokenizer=tok, latents=latents)
        return [(lat, r and r.to_dict(), n) for lat, r, n in builder.build_many(latents)]

    want = records(fake)  # one read per latent, locations sorted by the reader
    assert sum(r is not None for _, r, _ in want) >= 5
    reads = []
    real.iter_latents = lambda wanted, _real=real.iter_latents: (
        reads.append(list(wanted)) or _real(wanted)
    )
    assert records(real) == want
    assert len(reads) < len(latents)  # several latents per read
    for proc in (2, 3):
        import autointerp_full.examples.builder as bl

        old = bl.PARALLEL_MIN_LATENTS
        bl.PARALLEL_MIN_LATENTS = 1
        try:
            assert records(real, pipeline_num_proc=proc) == want
        finally:
            bl.PARALLEL_MIN_LATENTS = old
