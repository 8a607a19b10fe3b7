"""S3 access against a local moto server: uploads, and cache reads that fetch only the shards a
latent range needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("boto3")
pytest.importorskip("moto")

from autointerp_full import s3  # noqa: E402
from autointerp_full.errors import UserError  # noqa: E402

BUCKET = "autointerp-test-artifacts"


@pytest.fixture(scope="module")
def moto_endpoint() -> str:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """boto3's standard variables pointing at moto, as the pipeline's pods get them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    client = s3.make_client()
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return moto_endpoint


class CountingClient:
    """Counts GetObject calls made through a real boto3 client (botocore's event hooks)."""

    def __init__(self) -> None:
        self.client = s3.make_client()
        self.gets: list[str] = []
        self.client.meta.events.register("before-call.s3.GetObject", self._count)

    def _count(self, params: dict, **_: object) -> None:
        self.gets.append(params["url_path"].split("/", 2)[-1])


def write_fake_cache(root: Path, hookpoint: str, num_latents: int = 100, n_splits: int = 4) -> Path:
    """A cache folder in the writer's layout; shard files carry their name so reads are checked."""
    folder = root / hookpoint
    folder.mkdir(parents=True)
    width = -(-num_latents // n_splits)
    shards = []
    for i in range(n_splits):
        start, end = i * width, min(num_latents, (i + 1) * width)
        name = f"shard_{i}.safetensors"
        (folder / name).write_bytes(f"{name}-{start}-{end}".encode())
        shards.append({"file": name, "start": start, "end": end, "n": 1})
    (folder / "tokens.safetensors").write_bytes(b"tokens")
    config = {
        "model": "m", "sparse_model": "s", "hookpoint": hookpoint, "num_latents": num_latents,
        "n_seqs": 3, "cache_ctx_len": 16, "n_tokens": 48, "shards": shards,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return root


def test_upload_then_fetch_only_needed_shards(s3_env: str, tmp_path: Path) -> None:
    local = write_fake_cache(tmp_path / "cache", "layers.3")
    write_fake_cache(local, "layers.7")
    uri = f"s3://{BUCKET}/runs/r1/cache-op/cache"
    uploaded = s3.upload_folder(local, uri)
    assert "layers.3/shard_2.safetensors" in uploaded and len(uploaded) == 12

    counter = CountingClient()
    dest = tmp_path / "latents"
    fetched = s3.fetch_cache(uri, dest, (30, 40), client=counter.client)
    # Range [30, 40) lies in shard 1 ([25, 50)) of each hookpoint: 3 objects per hookpoint.
    expected = {
        f"{hp}/{name}"
        for hp in ("layers.3", "layers.7")
        for name in ("config.json", "tokens.safetensors", "shard_1.safetensors")
    }
    assert set(fetched) == expected
    assert len(counter.gets) == len(expected)
    assert all(g.endswith(tuple(sorted(expected))) for g in counter.gets)
    assert (dest / "layers.7" / "shard_1.safetensors").read_bytes() == b"shard_1.safetensors-25-50"
    assert not (dest / "layers.7" / "shard_0.safetensors").exists()

    # A range across a shard boundary needs both shards; what is there is not fetched again.
    fetched = s3.fetch_cache(uri, dest, (45, 55), client=counter.client)
    assert set(fetched) == {"layers.3/shard_2.safetensors", "layers.7/shard_2.safetensors"}

    from autointerp_full.schemas import validate_artifact

    validate_artifact("cache", dest)


def test_fetch_all_shards_without_range(s3_env: str, tmp_path: Path) -> None:
    local = write_fake_cache(tmp_path / "cache", "layers.0", num_latents=10, n_splits=3)
    uri = f"s3://{BUCKET}/runs/r2/cache"
    s3.upload_folder(local, uri)
    fetched = s3.fetch_cache(uri, tmp_path / "out", None)
    assert sorted(fetched) == sorted(
        f"layers.0/{n}"
        for n in ("config.json", "tokens.safetensors", "shard_0.safetensors",
                  "shard_1.safetensors", "shard_2.safetensors")
    )  # fmt: skip


def test_local_cache_is_linked_not_copied(tmp_path: Path) -> None:
    local = write_fake_cache(tmp_path / "cache", "layers.1")
    assert s3.fetch_cache(str(local), tmp_path / "latents", (0, 5)) == []
    link = tmp_path / "latents" / "layers.1"
    assert link.is_symlink() and (link / "shard_3.safetensors").exists()


def test_ensure_local_downloads_missing_list_members(s3_env: str, tmp_path: Path) -> None:
    folder = tmp_path / "scores" / "detection"
    folder.mkdir(parents=True)
    (folder / "a_latent_1.txt").write_text("{}")
    uri = f"s3://{BUCKET}/runs/r3/score-op/scores"
    s3.upload_folder(tmp_path / "scores", uri)
    got = s3.ensure_local(uri, tmp_path / "not-downloaded", tmp_path / "scratch")
    assert (got / "detection" / "a_latent_1.txt").read_text() == "{}"
    present = tmp_path / "scores"
    assert s3.ensure_local(uri, present, tmp_path / "scratch") == present
    nothing = f"s3://{BUCKET}/runs/r3/explain-op/explanations"  # an artifact with no files
    empty = s3.ensure_local(nothing, tmp_path / "n", tmp_path)
    assert empty.is_dir() and not any(empty.iterdir())


def test_shard_ranges_from_a_bare_count() -> None:
    config = {"num_latents": 10, "shards": 4}
    assert s3.shard_ranges(config) == [
        ("shard_0.safetensors", 0, 3),
        ("shard_1.safetensors", 3, 6),
        ("shard_2.safetensors", 6, 9),
        ("shard_3.safetensors", 9, 10),
    ]
    assert s3.needed_shards(config, (2, 4)) == ["shard_0.safetensors", "shard_1.safetensors"]


def test_errors_name_the_object(s3_env: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no <hookpoint>/config.json"):
        s3.fetch_cache(f"s3://{BUCKET}/nothing-here", tmp_path / "x", (0, 1))
    with pytest.raises(UserError, match=r"cannot download s3://.*/missing.bin"):
        s3.download_objects(f"s3://{BUCKET}/runs", ["missing.bin"], tmp_path / "y")
    assert not list((tmp_path / "y").rglob("*.part"))
    with pytest.raises(UserError, match="not an s3:// URI"):
        s3.split_uri("/local/path")


def test_examples_step_reads_a_real_cache_from_s3(
    s3_env: str, tmp_path: Path, tiny_model_dir: Path, tiny_sae_dir: Path, tiny_corpus: Path
) -> None:
    """The component side: plan and examples work from an s3:// cache URI, fetching 3 objects."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from autointerp_full.config import RunConfig
    from autointerp_full.stages import cache_stage
    from components.runtime import run_examples, run_plan

    cfg = RunConfig(
        model=str(tiny_model_dir), sparse_model=str(tiny_sae_dir), hookpoints=["layers.1"],
        dataset_repo=str(tiny_corpus), dataset_split="train", n_tokens=2000, batch_size=8,
        cache_ctx_len=32, n_splits=4, min_examples=2, n_examples_train=2, n_examples_test=2,
        n_non_activating=2, example_ctx_len=8, device="cpu", pipeline_num_proc=1, max_latents=16,
    )  # fmt: skip
    cache_stage(cfg, tmp_path / "cache")
    uri = f"s3://{BUCKET}/runs/r4/cache-op/cache"
    s3.upload_folder(tmp_path / "cache", uri)

    config = cfg.to_json()
    items = run_plan(config, [uri], 8)
    assert [i["latent_range"] for i in items] == [[0, 8], [8, 16]]
    info = run_examples(config, [uri], [8, 16], str(tmp_path / "examples"))
    # 128 latents in 4 shards of 32: [8, 16) needs config.json, tokens and shard_0 only.
    assert info["objects_fetched"] == 3
    built = sorted(p.name for p in (tmp_path / "examples").glob("*_latent_*.json"))
    assert built and all(8 <= int(n.split("_")[-1].split(".")[0]) < 16 for n in built)
