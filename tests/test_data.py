"""Dataset loading (local files with hub-style split slicing) and tokenisation into rows."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from autointerp_full.data import load_texts, tokenize_rows
from autointerp_full.errors import UserError

DOCS = [f"document number {i} says hello" for i in range(100)]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import pandas as pd

    root = tmp_path_factory.mktemp("data")
    out = {}
    out["jsonl"] = root / "docs.jsonl"
    out["jsonl"].write_text(
        "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(DOCS))
    )
    out["jsonl.gz"] = root / "docs.jsonl.gz"
    with gzip.open(out["jsonl.gz"], "wt") as fh:
        fh.write(out["jsonl"].read_text())
    out["txt"] = root / "docs.txt"
    out["txt"].write_text("\n".join(DOCS) + "\n")
    out["parquet"] = root / "docs.parquet"
    pd.DataFrame({"id": range(len(DOCS)), "body": DOCS}).to_parquet(out["parquet"])
    folder = root / "folder"
    folder.mkdir()
    for part in range(2):
        (folder / f"part-{part}.jsonl").write_text(
            "".join(json.dumps({"text": t}) + "\n" for t in DOCS[part * 50 : (part + 1) * 50])
        )
    out["folder"] = folder
    return out


@pytest.mark.parametrize(
    "kind, column", [("jsonl", "text"), ("jsonl.gz", "text"), ("txt", "text"), ("parquet", "body")]
)
def test_local_files_with_slicing(files: dict[str, Path], kind: str, column: str) -> None:
    path = str(files[kind])
    assert list(load_texts(path, "train", column)) == DOCS
    assert list(load_texts(path, "train[10:13]", column)) == DOCS[10:13]
    assert list(load_texts(path, "train[:5%]", column)) == DOCS[:5]
    assert list(load_texts(path, "train[-2:]", column)) == DOCS[-2:]


def test_folder_reads_every_file_in_order(files: dict[str, Path]) -> None:
    assert list(load_texts(str(files["folder"]), "train[48:52]", "text")) == DOCS[48:52]


def test_missing_column_names_the_flag_and_columns(files: dict[str, Path]) -> None:
    with pytest.raises(UserError, match=r"--dataset_column: no column 'body'.*columns: id, text"):
        load_texts(str(files["jsonl"]), "train", "body")


@pytest.mark.parametrize("split", ["test", "train[abc]"])
def test_bad_split_names_the_flag(files: dict[str, Path], split: str) -> None:
    with pytest.raises(UserError, match="--dataset_split"):
        load_texts(str(files["jsonl"]), split, "text")


def test_missing_file_and_unreachable_hub_name_the_repo_flag(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--dataset_repo"):
        load_texts(str(tmp_path / "missing.jsonl"), "train", "text")
    with pytest.raises(UserError, match="--dataset_repo"):
        load_texts("nobody-here/no-such-dataset", "train", "text")  # hub is offline in tests
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="--dataset_repo: unsupported file type"):
        load_texts(str(tmp_path / "x.csv"), "train", "text")


# ------------------------------------------------------------------------------ tokenisation
@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def test_rows_start_with_bos_and_concatenate_documents(tokenizer) -> None:
    docs = ["the cat sat on a mat", "red blue green", "one two three four five"] * 20
    rows = tokenize_rows(docs, tokenizer, ctx_len=16, n_tokens=100)
    assert rows.dtype.is_floating_point is False and str(rows.dtype) == "torch.int32"
    assert rows.shape == (7, 16)  # ceil(100 / 16)
    assert (rows[:, 0] == tokenizer.bos_token_id).all()
    # The row bodies, joined, are the documents' tokens separated by EOS, in order.
    stream = []
    for doc in docs:
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert rows[:, 1:].reshape(-1).tolist() == stream[: 7 * 15]


def test_tokenises_lazily(tokenizer) -> None:
    pulled = 0

    def docs():
        nonlocal pulled
        while True:
            pulled += 1
            yield "the cat sat on a mat and the dog ran to the river bank"

    rows = tokenize_rows(docs(), tokenizer, ctx_len=32, n_tokens=320)
    assert rows.shape == (10, 32)
    assert pulled < 500  # an endless dataset: only a little of it is read


def test_runs_out_with_a_warning(tokenizer, caplog: pytest.LogCaptureFixture) -> None:
    docs = ["the cat sat on a mat"] * 10
    with caplog.at_level(logging.WARNING, logger="autointerp_full"):
        rows = tokenize_rows(docs, tokenizer, ctx_len=8, n_tokens=10_000)
    assert 0 < rows.shape[0] < 10_000 // 8
    assert "ran out" in caplog.text and str(rows.numel()) in caplog.text
    with pytest.raises(UserError, match="fewer than one row"):
        tokenize_rows(["cat"], tokenizer, ctx_len=64, n_tokens=1000)


def test_no_bos_tokenizer_fills_rows_from_the_stream(tokenizer) -> None:
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.bos_token = None
    assert tok.bos_token_id is None
    rows = tokenize_rows(["one two three"] * 50, tok, ctx_len=8, n_tokens=32)
    assert rows.shape == (4, 8)
    ids = tok("one two three", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert rows.reshape(-1).tolist()[: len(ids)] == ids


# ------------------------------------------------------------------------------ the probe
def test_probe_accepts_what_load_texts_reads(files: dict[str, Path]) -> None:
    from autointerp_full.data import probe_texts

    for kind, column in (("jsonl", "text"), ("txt", "text"), ("parquet", "body")):
        for split in ("train", "train[10:13]", "train[:5%]", "train[-2:]"):
            probe_texts(str(files[kind]), split, column)
    probe_texts(str(files["folder"]), "train[48:52]", "text")


@pytest.mark.parametrize(
    "split, column, message",
    [
        ("test", "text", "^--dataset_split: 'test' does not exist"),
        ("train[abc]", "text", "^--dataset_split: invalid split"),
        ("train", "body", r"^--dataset_column: no column 'body'.*columns: id, text"),
        ("train[500:600]", "text", "^--dataset_repo: split 'train.500:600.' .* has no text"),
    ],
)
def test_probe_names_the_flag(files: dict[str, Path], split: str, column: str, message: str):
    from autointerp_full.data import probe_texts

    with pytest.raises(UserError, match=message):
        probe_texts(str(files["jsonl"]), split, column)


def test_probe_refuses_empty_and_broken_files(tmp_path: Path) -> None:
    from autointerp_full.data import probe_texts

    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": ""}) + "\n")
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n')
    cases = {"empty.jsonl": "is empty", "blank.jsonl": "has no text", "broken.jsonl": "cannot read"}
    for name, message in cases.items():
        with pytest.raises(UserError, match=f"^--dataset_repo: .*{message}"):
            probe_texts(str(tmp_path / name), "train", "text")
    with pytest.raises(UserError, match="^--dataset_repo: no such file"):
        probe_texts(str(tmp_path / "absent.jsonl"), "train", "text")
    with pytest.raises(UserError, match="^--dataset_repo: cannot open"):
        probe_texts("nobody-here/no-such-dataset", "train", "text")  # the hub is offline
