"""`python -m autointerp_full export`: the CSV, the JSONL and the Neuronpedia export, checked
against the run's own files; only current artifacts count; bad input is one line, exit 2."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest
from run_builder import RunBuilder, config, write
from subcommand import assert_rejected, assert_torch_free

from autointerp_full import layout
from autointerp_full.cli import main as cli_main
from autointerp_full.report import export

A, B = "layers.1", "layers.2.mlp"

# Neuronpedia's required (non-defaulted) fields of each record, from its db_models.
NP_REQUIRED = {
    "features": {"modelId", "layer", "index"},
    "activations": {"id", "tokens", "index", "layer", "modelId", "maxValue",
                    "maxValueTokenIndex", "minValue", "values", "creatorId"},
    "explanations": {"id", "modelId", "layer", "index", "description", "authorId"},
    "source.jsonl": {"id", "modelId", "setName", "creatorId"},
    "sourceset.jsonl": {"modelId", "name", "creatorId"},
    "model.jsonl": {"id", "instruct", "creatorId"},
}  # fmt: skip


@pytest.fixture()
def run(tmp_path: Path) -> RunBuilder:
    """layers.1: latent 0 (7/10 detection, 4/10 fuzz), latent 1 (detection failed, fuzz
    incomplete), latent 2 failed to explain. layers.2.mlp: latent 5 (9/10, 6/10). Left over from
    another configuration: latent 9's examples (stale fingerprint)."""
    builder = RunBuilder(tmp_path / "run", config("exp", [A, B], model="org/SmolLM2-135M"))
    builder.latent(A, 0, 'cats, "quoted", and commas', {"detection": 7, "fuzz": 4})
    builder.examples(A, 1)
    builder.explanation(A, 1, "dogs")
    builder.score("detection", A, 1, 0, 0, error="every request failed (2): 500")
    builder.score("fuzz", A, 1, 3, 3, incomplete=True)
    builder.examples(A, 2)
    write(layout.failures_file(builder.run.explanations), {f"{A}_latent_2": "unparseable reply"})
    builder.latent(B, 5, "numbers", {"detection": 9, "fuzz": 6})
    builder.null("detection", A, 0, 1, 4, 6)  # latent 0 scored with latent 1's explanation
    stale = layout.example_file(builder.run.examples, A, 9)
    write(stale, {"fingerprint": "old", "inputs": {}, "hookpoint": A, "latent": 9})
    return builder


def rows_of(path: Path) -> dict[tuple[str, int], dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {(r["hookpoint"], int(r["latent"])): r for r in csv.DictReader(fh)}


def test_csv_has_one_row_per_latent_with_scores_and_intervals(run: RunBuilder) -> None:
    paths = export.export_run(run.run.root, formats=["csv"])
    rows = rows_of(paths["csv"])
    assert sorted(rows) == [(A, 0), (A, 1), (A, 2), (B, 5)]  # stale latent 9 left out
    r0 = rows[(A, 0)]
    assert r0["explanation"] == 'cats, "quoted", and commas'
    assert float(r0["detection_accuracy"]) == pytest.approx(0.7)
    assert float(r0["fuzz_accuracy"]) == pytest.approx(0.4)
    # Wilson 95% interval of 7/10.
    assert float(r0["detection_accuracy_low"]) == pytest.approx(0.3968, abs=1e-3)
    assert float(r0["detection_accuracy_high"]) == pytest.approx(0.8922, abs=1e-3)
    assert r0["detection_n_answered"] == "10"
    assert float(r0["firing_rate"]) == pytest.approx(0.003)
    assert r0["n_activating"] == "300"
    assert r0["incomplete"] == "False" and r0["detection_error"] == ""
    assert float(r0["detection_accuracy_null"]) == pytest.approx(0.4)
    assert rows[(B, 5)]["detection_accuracy_null"] == ""  # no null score for this latent
    r1 = rows[(A, 1)]
    assert r1["detection_accuracy"] == "" and "every request failed" in r1["detection_error"]
    assert r1["incomplete"] == "True"
    r2 = rows[(A, 2)]
    assert r2["explanation"] == "" and r2["explanation_error"] == "unparseable reply"
    assert r2["detection_error"] == "not scored"
    assert paths["csv"].parent == run.run.root / export.EXPORT_DIR


def test_jsonl_rebuilds_the_run(run: RunBuilder) -> None:
    path = export.export_run(run.run.root, formats=["jsonl"])["jsonl"]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    head, latents = lines[0], {(x["hookpoint"], x["latent"]): x for x in lines[1:]}
    assert head["kind"] == "run" and head["config"]["model"] == "org/SmolLM2-135M"
    assert head["n_latents"] == 4 == len(latents)
    entry = latents[(A, 0)]
    on_disk = json.loads(layout.example_file(run.run.examples, A, 0).read_text())
    assert entry["examples"]["train"] == on_disk["train"]  # tokens, strings and activations
    assert entry["examples"]["train"][0]["activations"] == [0.0, 4.0, 1.0]
    score = json.loads(layout.score_file(run.run.scores, "detection", A, 0).read_text())
    assert entry["scores"]["detection"]["examples"] == score["examples"]  # per-example answers
    assert entry["explanation"] == 'cats, "quoted", and commas'
    side = json.loads(layout.explanation_provenance_file(run.run.explanations, A, 0).read_text())
    assert entry["provenance"] == {
        "examples": on_disk["fingerprint"],
        "explanation": side["fingerprint"],
        "scores": {
            "detection": score["fingerprint"],
            "fuzz": json.loads(layout.score_file(run.run.scores, "fuzz", A, 0).read_text())[
                "fingerprint"
            ],
        },
    }
    assert latents[(A, 2)]["explanation_error"] == "unparseable reply"
    null = entry["null_scores"]["detection"]
    assert null["inputs"]["null"]["source"] == {"hookpoint": A, "latent": 1}
    assert latents[(B, 5)]["null_scores"] == {}


def read_gz(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]


def test_neuronpedia_export_has_the_required_fields(run: RunBuilder) -> None:
    opts = export.NeuronpediaOptions(None, "autointerp", "user-123")
    root = export.export_run(run.run.root, formats=["neuronpedia"], neuronpedia=opts)
    root = root["neuronpedia"] / "smollm2-135m"
    assert sorted(p.name for p in root.iterdir()) == ["1-autointerp", "2-autointerp-mlp"]
    source = root / "1-autointerp"
    for name in ("source.jsonl", "sourceset.jsonl", "model.jsonl"):
        (row,) = [json.loads(line) for line in (source / name).read_text().splitlines()]
        assert NP_REQUIRED[name] <= set(row), name
    assert json.loads((source / "source.jsonl").read_text())["id"] == "1-autointerp"
    parts = {kind: read_gz(source / kind / "batch-0.jsonl.gz") for kind in
             ("features", "activations", "explanations")}  # fmt: skip
    for kind, rows in parts.items():
        assert rows, kind
        for row in rows:
            assert NP_REQUIRED[kind] <= set(row), kind
            assert (row["modelId"], row["layer"]) == ("smollm2-135m", "1-autointerp")
            assert isinstance(row["index"], str)
    assert sorted(f["index"] for f in parts["features"]) == ["0", "1", "2"]
    feature0 = next(f for f in parts["features"] if f["index"] == "0")
    assert feature0["frac_nonzero"] == pytest.approx(0.003) and feature0["maxActApprox"] == 4.0
    # Latent 0's activating windows (2 train + 1 test), strongest first, as in its examples.
    acts = [a for a in parts["activations"] if a["index"] == "0"]
    assert [a["maxValue"] for a in acts] == [4.0, 2.5, 2.0]
    assert acts[0]["tokens"] == ["the", " cat", " sat"] and acts[0]["values"] == [0.0, 4.0, 1.0]
    assert acts[0]["maxValueTokenIndex"] == 1 and acts[0]["creatorId"] == "user-123"
    assert len({a["id"] for a in parts["activations"]}) == len(parts["activations"])
    # Explanations: latents 0 and 1 (2 failed to explain), with the scores in the notes.
    described = {e["index"]: e for e in parts["explanations"]}
    assert sorted(described) == ["0", "1"]
    assert described["0"]["description"] == 'cats, "quoted", and commas'
    assert "detection accuracy 0.700 (n=10)" in described["0"]["notes"]
    assert "detection accuracy: failed" in described["1"]["notes"]
    assert described["0"]["authorId"] == "user-123"


def test_source_ids_and_model_ids() -> None:
    assert export.np_source_id("layers.15", "autointerp") == "15-autointerp"
    assert export.np_source_id("model.layers.3.mlp", "set") == "3-set-mlp"
    assert export.np_source_id("embed", "set") == "embed-set"
    assert export.np_model_id("/x/SmolLM2-135M-Instruct.Q4_1.gguf") == "smollm2-135m-instruct"
    assert export.np_model_id("meta-llama/Llama-3.1-8B") == "llama-3.1-8b"


def test_cli_writes_every_format(run: RunBuilder, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert cli_main(["export", str(run.run.root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"csv: {(out / export.CSV_FILE).resolve()}" in printed
    assert (out / export.JSONL_FILE).is_file()
    assert (out / "neuronpedia" / "smollm2-135m" / "1-autointerp" / "features").is_dir()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["missing"], "missing: no such run folder"),
        (["EMPTY"], "not a run folder"),
        (["RUN", "--formats", "xml"], "--formats: unknown format(s) xml"),
        (["RUN", "--np_source_set", "a b"], "--np_source_set: letters, digits"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    args: list[str], needle: str, run: RunBuilder, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    names = {"EMPTY": str(tmp_path / "empty"), "RUN": str(run.run.root)}
    assert_rejected(["export", *[names.get(a, a) for a in args]], needle, tmp_path)


def test_export_does_not_import_torch(run: RunBuilder) -> None:
    assert_torch_free(["export", str(run.run.root)])
