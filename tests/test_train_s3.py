"""Training with its output dir on a bucket (a real S3 server: moto's server mode, through s3fs): checkpoints
uploaded with a completion marker, exact resume from the URL, an unfinished upload ignored, the pipeline folder
uploaded and loaded back from its URL."""

from __future__ import annotations

import json

import pytest
import torch

from model.checkpoint import latest_checkpoint, list_checkpoints, load_trainable
from model.train_config import get_train_preset
from s3_server import BUCKET  # the `s3` fixture (tests/conftest.py) creates it
from test_train_data import write_stage2_datasets


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def stage2_manifests(tmp_path_factory) -> list[str]:
    return [str(p) for p in write_stage2_datasets(tmp_path_factory.mktemp("shards2"))]


def _names(fs, prefix: str) -> set[str]:
    fs.invalidate_cache()
    return {key.removeprefix(f"{BUCKET}/{prefix}/") for key in fs.find(f"{BUCKET}/{prefix}")}


def test_bucket_run_uploads_checkpoints_and_resumes_exactly_from_the_url(s3, stage2_manifests, tmp_path, monkeypatch,
                                                                      capsys):
    from model.train_stage2 import train_stage2
    from smartedit_cli.main import main

    fs, _ = s3
    monkeypatch.setenv("SMARTEDIT_CACHE", str(tmp_path / "cache"))
    local = train_stage2(get_train_preset(2, "tiny", manifests=stage2_manifests, output_dir=str(tmp_path / "local"),
                                          allow_missing_sources=True, steps=4, checkpoint_every=2, keep_last=None,
                                          save_pipeline=False))

    url = f"s3://{BUCKET}/runs/x"
    assert main(["train", "--preset", "tiny", "--stage", "2", "--steps", "4", "--checkpoint-every", "2",
                 "--keep-last", "1", "--allow-missing-sources", "--manifests", *stage2_manifests,
                 "--output-dir", url]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["run_dir"] == url and result["checkpoint"] == f"{url}/checkpoints/step-00000004"
    assert result["pipeline_dir"] == f"{url}/pipeline" and result["tensorboard_dir"] == f"{url}/tensorboard"
    names = _names(fs, "runs/x")
    ckpt = "checkpoints/step-00000004"
    assert {f"{ckpt}/{n}" for n in ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "state.json",
                                    "rng/rank-00000.pt", "_COMPLETE")} <= names
    assert not any(n.startswith("checkpoints/step-00000002") for n in names)  # keep_last=1 applies on the bucket
    assert "pipeline/_COMPLETE" in names and "pipeline/model_index.json" in names and "config.yaml" in names
    assert any(n.startswith("tensorboard/") for n in names)
    assert list_checkpoints(url) == [f"{url}/{ckpt}"]
    # the bucket run is the local run: same losses, same final weights (staging trains exactly as a local dir)
    for key in ("loss", "lm_loss", "diffusion_loss"):
        assert result["final"][key] == pytest.approx(local.final[key], rel=1e-6, abs=1e-7)
    remote_final = load_trainable(result["checkpoint"])  # a checkpoint URL: downloaded into the cache first
    local_final = load_trainable(local.checkpoint)
    assert all(torch.allclose(local_final[k], remote_final[k], atol=1e-6) for k in local_final)

    # a second run into the bucket, "killed" while uploading step 4: files there, marker not
    url2 = f"s3://{BUCKET}/runs/killed"
    cfg = get_train_preset(2, "tiny", manifests=stage2_manifests, output_dir=url2, allow_missing_sources=True,
                           steps=4, checkpoint_every=2, keep_last=None, save_pipeline=False)
    train_stage2(cfg)
    step4 = f"{BUCKET}/runs/killed/checkpoints/step-00000004"
    import dataclasses

    # resume from the URL on a fresh machine (empty cache) and on this one (its staging still holds step 4)
    for cache in ("fresh-cache", "cache"):
        fs.rm(f"{step4}/_COMPLETE")
        fs.rm(f"{step4}/optimizer.pt")
        assert latest_checkpoint(url2) == f"{url2}/checkpoints/step-00000002"  # the unfinished upload is ignored
        monkeypatch.setenv("SMARTEDIT_CACHE", str(tmp_path / cache))
        resumed = train_stage2(dataclasses.replace(cfg, resume="latest"))
        assert resumed.start_step == 2 and [h["step"] for h in resumed.history] == [3, 4], cache
        for key in ("loss", "lm_loss", "diffusion_loss"):
            for got, want in zip(resumed.history, local.history[2:]):
                assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), (cache, key)
        assert resumed.checkpoint == f"{url2}/checkpoints/step-00000004"
        final = load_trainable(resumed.checkpoint)
        assert all(torch.allclose(local_final[k], final[k], atol=1e-6) for k in local_final), cache
    assert fs.exists(f"{step4}/_COMPLETE") and fs.exists(f"{step4}/optimizer.pt")  # re-uploaded whole

    # an explicit resume URL without its marker is refused by name
    fs.rm(f"{step4}/_COMPLETE")
    with pytest.raises(FileNotFoundError, match=f"resume='{url2}/checkpoints/step-00000004': no _COMPLETE marker"):
        train_stage2(dataclasses.replace(cfg, resume=f"{url2}/checkpoints/step-00000004"))


def test_pipeline_is_loaded_from_its_url_through_the_cache(s3, stage2_manifests, tmp_path, monkeypatch):
    from model.pipelines import load_pipeline
    from model.train_stage2 import train_stage2
    from pipeline.remote_dirs import cache_dir

    fs, _ = s3
    monkeypatch.setenv("SMARTEDIT_CACHE", str(tmp_path / "cache"))
    url = f"s3://{BUCKET}/runs/pipe"
    result = train_stage2(get_train_preset(2, "tiny", manifests=stage2_manifests, output_dir=url, steps=1,
                                           checkpoint_every=1, allow_missing_sources=True, save_pipeline=True))
    assert result.pipeline_dir == f"{url}/pipeline"
    pipe = load_pipeline(result.pipeline_dir)
    assert type(pipe).__name__ == "SmartEditPipeline"
    copy = cache_dir(result.pipeline_dir, "downloads")
    assert (copy / "model_index.json").exists() and (copy / "_COMPLETE").exists()
    (copy / "sentinel").write_text("kept while the bucket's copy is unchanged")
    load_pipeline(result.pipeline_dir)
    assert (copy / "sentinel").exists()  # the cached copy was reused
    fs.pipe(f"{BUCKET}/runs/pipe/pipeline/_COMPLETE", b'{"uploaded": "again"}')  # as a re-upload leaves it
    load_pipeline(result.pipeline_dir)
    assert not (copy / "sentinel").exists()  # downloaded afresh

    # a checkpoint URL initialises another run (the retrain flow's champion → candidate)
    init = load_trainable(result.checkpoint)
    again = train_stage2(get_train_preset(2, "tiny", manifests=stage2_manifests, output_dir=str(tmp_path / "again"),
                                          steps=1, checkpoint_every=1, allow_missing_sources=True, save_pipeline=False,
                                          init_from=result.checkpoint, lr=1e-12))
    after = load_trainable(again.checkpoint)
    assert all(torch.allclose(after[k], v, atol=1e-6) for k, v in init.items())

    fs.rm(f"{BUCKET}/runs/pipe/pipeline/_COMPLETE")  # as if its upload had been cut off: refused, by name
    with pytest.raises(FileNotFoundError, match=f"{url}/pipeline: no _COMPLETE marker"):
        load_pipeline(result.pipeline_dir)


def test_scheduled_retrain_keeps_candidates_and_registry_on_the_bucket(s3, prefect_harness, samples_seed0, tmp_path,
                                                                       monkeypatch):
    """The retrain chain with ``runs`` and ``registry`` on the bucket: the candidate trains into it, the gate loads
    its pipeline from the URL, and the registry is an object there."""
    from flows.demo import sample_sources
    from flows.retrain import retrain
    from pipeline.remote_dirs import cache_dir

    fs, _ = s3
    monkeypatch.setenv("SMARTEDIT_CACHE", str(tmp_path / "cache"))
    runs, registry = f"s3://{BUCKET}/retrain/runs", f"s3://{BUCKET}/retrain/champion.json"
    benchmark = str(samples_seed0.root / "reason_edit")
    first = retrain(sources={"edit": sample_sources(samples_seed0.root)["edit"][1:]}, shards=str(tmp_path / "shards"),
                    runs=runs, registry=registry, benchmark=benchmark, preset="tiny", steps=2, num_inference_steps=2,
                    allow_fidelity_only=True)
    assert first["promoted"] is True
    candidate = first["candidate"]
    assert candidate["pipeline"].startswith(f"{runs}/candidate-") and candidate["pipeline"].endswith("/train/pipeline")
    assert candidate["checkpoint"].startswith(f"{runs}/candidate-")
    assert fs.exists(candidate["pipeline"].removeprefix("s3://") + "/_COMPLETE")
    assert fs.exists(candidate["checkpoint"].removeprefix("s3://") + "/_COMPLETE")
    stored = json.loads(fs.cat_file(registry.removeprefix("s3://")))
    assert stored["champion"]["pipeline"] == candidate["pipeline"] and len(stored["history"]) == 1

    # the gate evaluated the candidate from its URL: a downloaded copy in the cache
    copy = cache_dir(candidate["pipeline"], "downloads")
    assert (copy / "_COMPLETE").exists() and (copy / "model_index.json").exists()


def test_two_ranks_upload_once_with_every_ranks_rng_state(s3, stage2_manifests, tmp_path, monkeypatch):
    """`torchrun --nproc_per_node 2` (DDP over gloo) into the bucket: rank 0 uploads after the barrier, the
    checkpoint holds both ranks' RNG states and its marker."""
    from test_train_multiprocess import _launch

    fs, _ = s3
    monkeypatch.setenv("SMARTEDIT_CACHE", str(tmp_path / "cache"))  # the launched ranks inherit it and AWS_*
    url = f"s3://{BUCKET}/runs/ddp"
    config = tmp_path / "ddp.yaml"
    get_train_preset(2, "tiny", output_dir=url, manifests=stage2_manifests, allow_missing_sources=True, steps=2,
                     checkpoint_every=2, save_pipeline=False).save_yaml(config)
    _launch(config, tmp_path / "ddp.log")
    names = _names(fs, "runs/ddp")
    ckpt = "checkpoints/step-00000002"
    assert {f"{ckpt}/rng/rank-00000.pt", f"{ckpt}/rng/rank-00001.pt", f"{ckpt}/_COMPLETE"} <= names
    assert json.loads(fs.cat_file(f"{BUCKET}/runs/ddp/{ckpt}/state.json"))["run"]["num_processes"] == 2
