"""Shared fixtures: a tiny randomly initialised Llama with a real (small) tokenizer, a tiny SAE in
sparsify layout, and a small local corpus. Nothing here touches the network."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = (
    "the cat dog sat on a mat river bank money city paris london red blue green one two three "
    "four five run jump walk quickly slowly and or but if then because python code function "
    "class import return number 1 2 3 4 5 6 7 8 9 0 ( ) , . ; : ! ? The A In It"
).split()

TINY_HIDDEN = 64
TINY_LAYERS = 4
TINY_LATENTS = 128


def make_corpus_texts(n_docs: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        n = rng.randint(40, 160)
        docs.append(" ".join(rng.choice(WORDS) for _ in range(n)))
    return docs


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JSONL file with a `text` column (about 20k tokens)."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i, text in enumerate(make_corpus_texts()):
            fh.write(json.dumps({"id": i, "text": text}) + "\n")
    return path


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(make_corpus_texts(50, seed=1), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=TINY_HIDDEN,
        intermediate_size=128,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local directory holding a 4-layer Llama (hidden 64) and a 300-token BPE tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


def write_sparsify_sae(
    root: Path,
    hookpoint: str,
    d_in: int = TINY_HIDDEN,
    num_latents: int = TINY_LATENTS,
    k: int = 8,
    activation: str = "topk",
    transcode: bool = False,
    seed: int = 0,
) -> Path:
    """A random SAE in sparsify layout: <root>/<hookpoint>/{cfg.json,sae.safetensors}."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    folder = root / hookpoint
    folder.mkdir(parents=True, exist_ok=True)
    w_enc = torch.randn(num_latents, d_in, generator=gen) / d_in**0.5
    tensors = {
        "encoder.weight": w_enc.contiguous(),
        "encoder.bias": (torch.randn(num_latents, generator=gen) * 0.1).contiguous(),
        "W_dec": w_enc.clone().contiguous(),
        "b_dec": torch.zeros(d_in),
    }
    save_file(tensors, str(folder / "sae.safetensors"))
    cfg = {
        "activation": activation,
        "k": k,
        "num_latents": num_latents,
        "d_in": d_in,
        "transcode": transcode,
        "normalize_decoder": True,
        "expansion_factor": num_latents // d_in,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return root


@pytest.fixture(scope="session")
def tiny_sae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TopK (k=8, 128 latents) SAE at hookpoint layers.1 of the tiny model."""
    return write_sparsify_sae(tmp_path_factory.mktemp("tiny_sae"), "layers.1")
