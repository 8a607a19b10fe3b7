"""The LLM stages stream their latents: example files are listed first and each is read when a
worker takes its latent, so the first request does not wait for every file, and what is listed,
read and written is what loading every file first gave."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from autointerp_full import layout, stages
from autointerp_full import provenance as prov
from autointerp_full.config import RunConfig
from autointerp_full.examples.types import Example, LatentRecord
from autointerp_full.io import atomic_write_json
from autointerp_full.llm.base import Completion, Usage

HOOK = "layers.0"
INPUTS = {"examples": "current"}


def record(latent: int) -> LatentRecord:
    window = Example(
        tokens=[1, 2, 3], str_tokens=[" the", " cat", " sat"], activations=[0.0, 2.0 + latent, 0.0]
    )
    return LatentRecord(HOOK, latent, 5, 0.01, 2.0 + latent, train=[window], test=[window])


def write_examples(folder: Path, n: int) -> None:
    """n current example files; the index names the current fingerprint for the hookpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    for latent in range(n):
        path = layout.example_file(folder, HOOK, latent)
        atomic_write_json(path, prov.stamp(record(latent).to_dict(), INPUTS))
    entry = prov.ExamplesEntry(prov.fingerprint(INPUTS), INPUTS, {})
    prov.write_examples_index(layout.skipped_file(folder), {HOOK: entry})


def as_loaded(items: list[stages.LoadedExamples]) -> list[tuple[dict[str, Any], str | None]]:
    return [(x.record.to_dict(), x.fingerprint) for x in items]


def listed_and_read(cfg: RunConfig, folder: Path) -> list[tuple[dict[str, Any], str | None]]:
    read = [stages.read_example_file(f) for f in stages.list_example_files(cfg, folder)]
    return as_loaded([x for x in read if x is not None])


def test_listing_then_reading_gives_what_loading_gives(tmp_path: Path) -> None:
    folder = tmp_path / "examples"
    write_examples(folder, 12)
    # Another configuration's file: left out.
    atomic_write_json(
        layout.example_file(folder, HOOK, 3), prov.stamp(record(3).to_dict(), {"other": 1})
    )
    # Current, but its fingerprint is not at the head: read whole, and kept.
    data = prov.stamp(record(5).to_dict(), INPUTS)
    reordered = {k: v for k, v in data.items() if k != prov.FINGERPRINT}
    reordered[prov.FINGERPRINT] = data[prov.FINGERPRINT]
    layout.example_file(folder, HOOK, 5).write_text(json.dumps(reordered))
    assert prov.peek_fingerprint(layout.example_file(folder, HOOK, 5)) is None
    # Another hookpoint's and an unselected latent's files are not listed.
    atomic_write_json(folder / f"{layout.latent_stem('layers.9', 0)}{layout.EXAMPLE_EXT}", {})

    for cfg in (RunConfig(hookpoints=[HOOK]), RunConfig(hookpoints=[HOOK], max_latents=8)):
        expected = as_loaded(stages.load_examples(cfg, folder))
        assert listed_and_read(cfg, folder) == expected
        assert [d["latent"] for d, _ in expected] == [
            i for i in range(cfg.max_latents or 12) if i != 3
        ]
    # A range, and an index without fingerprints (every selected file is current).
    assert listed_and_read(RunConfig(hookpoints=[HOOK]), folder)[:1] == as_loaded(
        stages.load_examples(RunConfig(hookpoints=[HOOK]), folder, (0, 1))
    )
    layout.skipped_file(folder).write_text(json.dumps({HOOK: {"old": True}}))
    cfg = RunConfig(hookpoints=[HOOK])
    assert listed_and_read(cfg, folder) == as_loaded(stages.load_examples(cfg, folder))
    assert len(listed_and_read(cfg, folder)) == 12


def test_a_file_rewritten_after_listing_is_left_out(tmp_path: Path) -> None:
    folder = tmp_path / "examples"
    write_examples(folder, 2)
    files = stages.list_example_files(RunConfig(hookpoints=[HOOK]), folder)
    atomic_write_json(files[1].path, prov.stamp(record(1).to_dict(), {"other": 1}))
    assert stages.read_example_file(files[0]) is not None
    assert stages.read_example_file(files[1]) is None


class CountingClient:
    """Answers every request with an explanation; notes how many example files had been read
    when each request was made."""

    stage = "explain"

    def __init__(self, reads: list[Path]) -> None:
        self.usage = Usage()
        self.reads = reads
        self.reads_at_request: list[int] = []

    async def generate(self, messages: list[dict[str, str]], **_: Any) -> Completion:
        self.reads_at_request.append(len(self.reads))
        await asyncio.sleep(0)
        return Completion("[EXPLANATION]: the word cat", 1, 1)

    def with_stage(self, stage: str) -> CountingClient:
        return self

    async def aclose(self) -> None:
        pass


def test_the_first_request_goes_out_before_the_other_files_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "examples"
    n = 30
    write_examples(folder, n)
    reads: list[Path] = []
    read = stages.read_example_file

    def counted(file: stages.ExampleFile) -> stages.LoadedExamples | None:
        reads.append(file.path)
        return read(file)

    monkeypatch.setattr(stages, "read_example_file", counted)
    cfg = RunConfig(hookpoints=[HOOK], explainer_provider="vllm", max_concurrent_requests=4)
    client = CountingClient(reads)
    explanations = tmp_path / "explanations"
    asyncio.run(stages.llm_stages_async(cfg, client, folder, explanations, None))
    assert client.reads_at_request[0] <= cfg.max_concurrent_requests
    assert len(reads) == n  # each file read once
    for latent in range(n):
        text = layout.explanation_file(explanations, HOOK, latent).read_text()
        assert text == "the word cat"
