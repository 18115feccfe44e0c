"""MGIE expressive instructions: the official cleaning rule, the shard step with tiny random LLaVA and T5 saved
to disk, drop accounting, resume, and the Prefect flow under the session's test server."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from model.mgie.expressive import ExpressiveConfig, clean_description, express_shard, load_expressive
from test_train_data import write_dataset

torch.set_num_threads(1)


@pytest.mark.parametrize("raw, expected", [
    ("The cup will be red. The table stays brown. A third sentence.", "The cup will be red. The table stays brown."),
    ("The sky turns purple</s> ignored", "The sky turns purple."),
    ("A dog in a hat. Alternatively, a cat could wear it.", "A dog in a hat."),
    ("A beard appears [IMG0] [IMG1]", "A beard appears."),
    ("ASSISTANT: The frame is red.", "The frame is red."),
    ("alternative only", ""),
])
def test_clean_description_follows_the_official_rule(raw, expected):
    assert clean_description(raw) == expected


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """A tiny random LLaVA and a tiny random T5 (the summariser), saved as local directories."""
    from transformers import T5Config, T5ForConditionalGeneration

    from model.llava import build_tiny_llava, build_tiny_tokenizer

    root = tmp_path_factory.mktemp("models")
    llava, tokenizer, image_processor = build_tiny_llava(seed=1)
    for part in (llava, tokenizer, image_processor):
        part.save_pretrained(root / "llava")
    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id))
    t5.save_pretrained(root / "t5")
    tok.save_pretrained(root / "t5")
    return {"llava_dir": str(root / "llava"), "summariser_dir": str(root / "t5")}


def _config(models: dict[str, str]) -> ExpressiveConfig:
    return ExpressiveConfig(**models, max_new_tokens=12, max_words=6)


def test_shard_step_writes_a_keyed_sidecar_and_resumes(tiny_models, tmp_path):
    from model.mgie.expressive import build_models, shard_urls

    index = write_dataset(tmp_path / "shards", "magicbrush", "magicbrush", "edit_pair", 3, shard_size=4)
    config = _config(tiny_models)
    describer, summariser = build_models(config)
    shard = shard_urls(index)[0]
    stats = express_shard(shard, tmp_path / "out", describer, summariser, config)
    assert stats["skipped"] is False
    # counted per instruction: each fixture sample carries two paraphrases
    assert stats["in"] == stats["kept"] + sum(stats["rejected"].values()) == 6
    lines = [json.loads(line) for line in Path(stats["sidecar"]).read_text().splitlines()]
    assert len(lines) == stats["kept"]
    for rec in lines:
        assert set(rec) == {"key", "instruction", "description", "expressive"}
        assert 1 <= len(rec["expressive"].split()) <= 6 and rec["description"].endswith(".")
    table = load_expressive(tmp_path / "out")
    assert {r["key"] for r in lines} == set(table)
    assert all(table[r["key"]][r["instruction"]] == r["expressive"] for r in lines)
    # deterministic (greedy LLaVA, beam-search summariser) and resumable: the marker makes a rerun skip
    again = express_shard(shard, tmp_path / "out", describer, summariser, config)
    assert again["skipped"] is True and again["kept"] == stats["kept"]
    fresh = express_shard(shard, tmp_path / "out2", describer, summariser, config)
    assert Path(fresh["sidecar"]).read_text() == Path(stats["sidecar"]).read_text()


def test_drops_are_counted_with_their_reason(tmp_path):
    """Swappable parts: a describer that says nothing and a summariser that returns nothing."""
    from model.data import decode_members
    from model.mgie.expressive import express_samples, shard_urls

    import webdataset as wds

    class Silent:
        def describe(self, image, instruction):
            return "Alternatively nothing."

    index = write_dataset(tmp_path / "shards", "mb", "magicbrush", "edit_pair", 2)
    vqa = write_dataset(tmp_path / "shards", "llava", "llava-instruct", "vqa", 1)
    samples = [decode_members(s) for path in (index, vqa) for url in shard_urls(path)
               for s in wds.WebDataset(str(url), shardshuffle=False, empty_check=False)]
    counts: Counter = Counter()
    kept = list(express_samples(samples, Silent(), lambda texts: ["x"] * len(texts), ExpressiveConfig(), counts))
    assert kept == [] and counts == Counter({"in": 5, "empty_description": 4, "not_an_edit_pair": 1})

    class Talkative:
        def describe(self, image, instruction):
            return "The cup is red. Everything else stays."

    counts = Counter()
    kept = list(express_samples(samples, Talkative(), lambda texts: [""] * len(texts), ExpressiveConfig(), counts))
    assert kept == [] and counts["empty_summary"] == 4 and counts["in"] == 5


def test_flow_under_prefect(prefect_harness, tiny_models, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.expressive import expressive_instructions

    write_dataset(tmp_path / "shards", "magicbrush", "magicbrush", "edit_pair", 5, shard_size=4)
    out = tmp_path / "expressive"
    result = expressive_instructions(inputs=[str(tmp_path / "shards")], output=str(out), max_new_tokens=8,
                                     **tiny_models)
    assert len(result["shards"]) == 2 and result["in"] == 10 and result["skipped_shards"] == 0
    assert result["kept"] == sum(len(v) for v in load_expressive(out).values()) <= 10
    assert sorted(p.name for p in (out / "shards-magicbrush").iterdir()) == [
        "magicbrush-000000.expressive.jsonl", "magicbrush-000000.expressive.stats.json",
        "magicbrush-000001.expressive.jsonl", "magicbrush-000001.expressive.stats.json"]
    with get_client(sync_client=True) as client:
        artifacts = client.read_latest_artifacts()
    assert any(a.key == "expressive-instructions" for a in artifacts)
    again = expressive_instructions(inputs=[str(tmp_path / "shards")], output=str(out), max_new_tokens=8, **tiny_models)
    assert again["skipped_shards"] == 2 and again["kept"] == result["kept"]


def test_cli_command_runs_the_flow(prefect_harness, tiny_models, tmp_path, capsys):
    import argparse

    from smartedit_cli.expressive import register

    write_dataset(tmp_path / "shards", "magicbrush", "magicbrush", "edit_pair", 2)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["expressive", "--input", str(tmp_path / "shards"), "--out", str(tmp_path / "x"),
                              "--llava", tiny_models["llava_dir"], "--summariser", tiny_models["summariser_dir"],
                              "--max-new-tokens", "6"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["in"] == 4 and summary["kept"] == sum(len(v) for v in load_expressive(tmp_path / "x").values())
