"""Text datasets (hub or local files) and their tokenisation into fixed-length rows.

`load_texts` reads a hub dataset or local txt/jsonl/json/parquet files (optionally gzipped) with
the same split syntax (`train`, `train[:1%]`, `train[10:200]`) for both. `tokenize_rows` turns
a stream of documents into an int32 [n_rows, ctx_len] tensor, tokenising only what it needs.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MissingExtraError, UserError, one_line
from .logs import log

if TYPE_CHECKING:
    import torch

# Local file suffix -> datasets builder name.
_BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}
_ITER_BATCH = 1000  # rows fetched from a dataset at a time
_MAX_CHARS = 500_000  # text tokenised per call: bounds the memory of Python token lists
_PROBE_ROWS = 1000  # rows probe_texts reads at most, looking for text


def _builder_for(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst"):
        suffixes = suffixes[:-1]
    return _BUILDERS.get(suffixes[-1]) if suffixes else None


def _local_files(path: Path) -> tuple[str, list[str]]:
    """The builder name and the data files for a local file or folder."""
    if path.is_file():
        builder = _builder_for(path)
        if builder is None:
            raise UserError(
                f"--dataset_repo: unsupported file type {path.name!r}; use .txt, .jsonl, .json "
                "or .parquet (optionally .gz)"
            )
        return builder, [str(path)]
    by_builder: dict[str, list[str]] = {}
    for file in sorted(path.rglob("*")):
        if file.is_file() and not any(p.startswith(".") for p in file.relative_to(path).parts):
            builder = _builder_for(file)
            if builder is not None:
                by_builder.setdefault(builder, []).append(str(file))
    if not by_builder:
        raise UserError(
            f"--dataset_repo: no .txt, .jsonl, .json or .parquet files in folder {str(path)!r}"
        )
    if len(by_builder) > 1:
        kinds = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_builder.items()))
        raise UserError(
            f"--dataset_repo: folder {str(path)!r} mixes file types ({kinds}); "
            "keep one type per folder"
        )
    ((builder, files),) = by_builder.items()
    return builder, files


def _check_split(split: str) -> Any:
    """Parse the split spec early so that a typo names --dataset_split, not the dataset."""
    import datasets

    try:
        return datasets.ReadInstruction.from_spec(split)
    except (ValueError, AssertionError) as exc:
        raise UserError(
            f"--dataset_split: invalid split {split!r}: {one_line(exc, None)}"
        ) from None


def _is_split_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "split" in text and (
        "unknown" in text or "bad split" in text or "should be one of" in text
    )


def _load_local(path: Path, split: str, num_proc: int) -> Any:
    import datasets

    builder, files = _local_files(path)
    kwargs: dict[str, Any] = {"data_files": {"train": files}, "split": split}
    if num_proc > 1:
        kwargs["num_proc"] = num_proc
    try:
        return datasets.load_dataset(builder, **kwargs)
    except ValueError as exc:
        if _is_split_error(exc):
            raise UserError(
                f"--dataset_split: {split!r} does not exist for local files (use 'train', "
                f"optionally sliced, e.g. train[:10%]): {one_line(exc, None)}"
            ) from None
        raise UserError(
            f"--dataset_repo: cannot read {str(path)!r}: {one_line(exc, None)}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - pyarrow/json errors have no common base
        raise UserError(
            f"--dataset_repo: cannot read {str(path)!r}: {one_line(exc, None)}"
        ) from None


def _hub_splits(repo: str, split: str, token: str | None) -> tuple[Any, dict[str, int]]:
    """(parsed split, rows per known split) of a hub dataset, from its metadata only."""
    import datasets

    instruction = _check_split(split)
    try:
        builder = datasets.load_dataset_builder(repo, token=token)
        splits = builder.info.splits or {}
        sizes = {name: info.num_examples for name, info in splits.items() if info.num_examples}
    except Exception as exc:  # noqa: BLE001 - hub errors come in many types
        raise UserError(
            f"--dataset_repo: cannot open dataset {repo!r}: {one_line(exc, token)}"
        ) from None
    names = [ri.splitname for ri in instruction._relative_instructions]
    unknown = [n for n in names if splits and n not in splits]
    if unknown:
        raise UserError(
            f"--dataset_split: no split {unknown[0]!r} in {repo!r}; splits: {', '.join(splits)}"
        )
    return instruction, sizes


def _load_hub(repo: str, split: str, token: str | None, num_proc: int) -> Any:
    """A hub dataset, streamed when the split's row range can be worked out without downloading."""
    import datasets

    instruction, sizes = _hub_splits(repo, split, token)
    names = [ri.splitname for ri in instruction._relative_instructions]
    if all(n in sizes for n in names):
        # Stream only the rows the split asks for: no full download for train[:1%].
        parts = []
        for absolute in instruction.to_absolute(sizes):
            stream = datasets.load_dataset(
                repo, split=absolute.splitname, streaming=True, token=token
            )
            start = absolute.from_ or 0
            stop = absolute.to if absolute.to is not None else sizes[absolute.splitname]
            parts.append(stream.skip(start).take(max(0, stop - start)))
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    kwargs: dict[str, Any] = {"split": split, "token": token}
    if num_proc > 1:
        kwargs["num_proc"] = num_proc
    try:
        return datasets.load_dataset(repo, **kwargs)
    except ValueError as exc:
        if _is_split_error(exc):
            raise UserError(f"--dataset_split: {one_line(exc, token)}") from None
        raise UserError(f"--dataset_repo: cannot load {repo!r}: {one_line(exc, token)}") from None
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"--dataset_repo: cannot load {repo!r}: {one_line(exc, token)}") from None


def _column_names(ds: Any) -> list[str]:
    names = getattr(ds, "column_names", None)
    if names:
        return list(names)
    features = getattr(ds, "features", None)
    if features:
        return list(features)
    # A stream without schema: look at its first row.
    first = next(iter(ds.take(1)), None)
    return list(first) if first else []


def load_texts(
    repo: str, split: str, column: str, *, token: str | None = None, num_proc: int = 1
) -> Iterable[str]:
    """The texts of one column of a hub dataset or of local files, in order.

    Errors (missing dataset, bad split, missing column) are raised here, before iteration.
    """
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise MissingExtraError("datasets", "dev", "Loading a text dataset") from None

    path = Path(repo).expanduser()
    if path.exists():
        _check_split(split)
        ds = _load_local(path, split, num_proc)
    elif repo.startswith((".", "/", "~")) or repo.endswith(tuple(_BUILDERS)):
        raise UserError(f"--dataset_repo: no such file or directory: {repo!r}")
    else:
        ds = _load_hub(repo, split, token, num_proc)

    _check_column(ds, repo, column)
    return _iter_column(ds, column)


def _check_column(ds: Any, repo: str, column: str) -> None:
    columns = _column_names(ds)
    if not columns:
        raise UserError(f"--dataset_repo: {repo!r} holds no rows")
    if column not in columns:
        raise UserError(
            f"--dataset_column: no column {column!r} in {repo!r}; columns: {', '.join(columns)}"
        )


def _streamable(instruction: Any) -> bool:
    """One slice of a split, found by streaming: no percentages, no negative indices."""
    parts = instruction._relative_instructions
    return len(parts) == 1 and all(
        ri.unit != "%" and (ri.from_ or 0) >= 0 and (ri.to is None or ri.to >= 0) for ri in parts
    )


def _stream_range(ds: Any, instruction: Any) -> Any:
    """The first slice of a split spec, applied to a stream of its split."""
    first = instruction._relative_instructions[0]
    start = first.from_ or 0
    ds = ds.skip(start) if start else ds
    return ds.take(first.to - start) if first.to is not None else ds


def probe_texts(repo: str, split: str, column: str, *, token: str | None = None) -> None:
    """Check, reading only a little, that the dataset opens, the split is valid, the column
    exists and the split holds some text. Errors are the same one-line UserErrors as
    load_texts'; the texts themselves are read later by load_texts."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise MissingExtraError("datasets", "dev", "Loading a text dataset") from None
    with _quiet_datasets():
        _probe(repo, split, column, token)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars or logged errors from datasets: a failed probe is our one-line error."""
    from datasets.utils import logging as ds_logging

    bars = ds_logging.is_progress_bar_enabled()
    logger = logging.getLogger("datasets")
    level = logger.level
    ds_logging.disable_progress_bar()
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars:
            ds_logging.enable_progress_bar()


def _probe(repo: str, split: str, column: str, token: str | None) -> None:
    import datasets

    path = Path(repo).expanduser()
    if path.exists():
        instruction = _check_split(split)
        builder, files = _local_files(path)
        if all(Path(f).stat().st_size == 0 for f in files):
            raise UserError(f"--dataset_repo: {repo!r} is empty (no rows)")
        names = {ri.splitname for ri in instruction._relative_instructions}
        if names != {"train"} or not _streamable(instruction):
            # A percentage or a negative index needs the row count: load as the run will
            # (datasets caches the result, so the run's own load is then cheap).
            ds = _load_local(path, split, 1)
        else:
            try:
                stream = datasets.load_dataset(
                    builder, data_files={"train": files}, split="train", streaming=True
                )
                ds = _stream_range(stream, instruction)
            except Exception as exc:  # noqa: BLE001 - pyarrow/json errors have no common base
                raise UserError(
                    f"--dataset_repo: cannot read {str(path)!r}: {one_line(exc, None)}"
                ) from None
    elif repo.startswith((".", "/", "~")) or repo.endswith(tuple(_BUILDERS)):
        raise UserError(f"--dataset_repo: no such file or directory: {repo!r}")
    else:
        instruction, _sizes = _hub_splits(repo, split, token)
        first = instruction._relative_instructions[0]
        try:
            ds = datasets.load_dataset(repo, split=first.splitname, streaming=True, token=token)
        except Exception as exc:  # noqa: BLE001
            raise UserError(
                f"--dataset_repo: cannot open {repo!r}: {one_line(exc, token)}"
            ) from None
        if _streamable(instruction):
            ds = _stream_range(ds, instruction)
    try:
        _check_column(ds, repo, column)
        found = _first_text(ds, column)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bad row surfaces only when read
        raise UserError(f"--dataset_repo: cannot read {repo!r}: {one_line(exc, token)}") from None
    if found is False:
        raise UserError(
            f"--dataset_repo: split {split!r} of {repo!r} has no text in column {column!r}"
        )


def _first_text(ds: Any, column: str) -> bool | None:
    """True when one of the first _PROBE_ROWS rows has text, False when the split ends
    before any does, None when that many rows were all empty (no verdict)."""
    seen = 0
    for row in ds.select_columns([column]) if hasattr(ds, "select_columns") else ds:
        if row[column]:
            return True
        seen += 1
        if seen >= _PROBE_ROWS:
            log.warning("--dataset_column: the first %d rows of %r are empty", seen, column)
            return None
    return False


def _iter_column(ds: Any, column: str) -> Iterator[str]:
    if hasattr(ds, "select_columns"):
        ds = ds.select_columns([column])
    for batch in ds.iter(batch_size=_ITER_BATCH):
        for text in batch[column]:
            if text:
                yield text if isinstance(text, str) else str(text)


# ---------------------------------------------------------------------------- tokenisation
def tokenize_rows(
    texts: Iterable[str], tokenizer: Any, ctx_len: int, n_tokens: int
) -> torch.Tensor:
    """Concatenate documents (separated by EOS, else BOS) and cut them into rows of ctx_len.

    Each row starts with the BOS token when the tokenizer has one, so the model always sees a
    normal sequence start. Returns int32 [ceil(n_tokens / ctx_len), ctx_len], fewer rows (with a
    warning) when the texts run out. Text is tokenised in chunks, only as far as needed.
    """
    import numpy as np
    import torch

    if ctx_len < 2:
        raise UserError(f"--cache_ctx_len: must be >= 2 (got {ctx_len})")
    if n_tokens < 1:
        raise UserError(f"--n_tokens: must be >= 1 (got {n_tokens})")
    n_rows = math.ceil(n_tokens / ctx_len)
    bos = tokenizer.bos_token_id
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else bos
    body = ctx_len - 1 if bos is not None else ctx_len  # tokens per row taken from the stream
    needed = n_rows * body

    # One preallocated buffer for the row bodies: peak memory stays near 2x the token ids.
    stream = np.empty(needed, dtype=np.int32)
    have = 0
    docs = iter(texts)
    chars_per_token = 4.0  # refined as we go; decides how much text to tokenise next
    seen_chars = seen_tokens = 0
    exhausted = False
    while have < needed and not exhausted:
        # Ask for a little more text than the remaining tokens should need.
        budget = min(_MAX_CHARS, max(2048, int((needed - have) * chars_per_token * 1.2)))
        batch: list[str] = []
        chars = 0
        while chars < budget and len(batch) < 4096:
            text = next(docs, None)
            if text is None:
                exhausted = True
                break
            batch.append(text)
            chars += len(text)
        if not batch:
            break
        encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
        del batch
        for ids in encoded:
            if sep is not None:
                ids = [*ids, sep]
            take = min(len(ids), needed - have)
            stream[have : have + take] = ids[:take]
            have += take
            seen_tokens += len(ids)
            if have == needed:
                break
        seen_chars += chars
        chars_per_token = max(1.0, seen_chars / max(1, seen_tokens))

    got_rows = min(n_rows, have // body)
    if got_rows == 0:
        raise UserError(
            f"--dataset_repo: the dataset has only {have} tokens, fewer than one row of "
            f"--cache_ctx_len {ctx_len}"
        )
    if got_rows < n_rows:
        log.warning(
            "the dataset ran out: %d tokens in %d rows instead of the %d tokens asked for by "
            "--n_tokens",
            got_rows * ctx_len,
            got_rows,
            n_rows * ctx_len,
        )
    if bos is None:
        return torch.from_numpy(stream[: got_rows * body].reshape(got_rows, ctx_len))
    rows = np.empty((got_rows, ctx_len), dtype=np.int32)
    rows[:, 0] = bos
    rows[:, 1:] = stream[: got_rows * body].reshape(got_rows, body)
    del stream
    return torch.from_numpy(rows)
