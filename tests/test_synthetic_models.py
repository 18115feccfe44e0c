"""The model-backed paths, each with a tiny random model saved to disk and loaded by path through the same
code as real checkpoints: SAM (segment_anything builder), diffusers inpainting, CLIP direction, LLM paraphrase."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.synthetic.build import BuildInputs, build
from pipeline.synthetic.config import SamArch, SyntheticConfig
from pipeline.synthetic.export import read_samples
from synthetic_fixtures import make_scenes

torch.set_num_threads(2)
FEW = {"left_right": 1, "reasoning": 2, "colour": 1}
TINY_SAM = SamArch(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("scenes"))


def byte_level_vocab() -> dict[str, int]:
    """A complete byte-level vocabulary without merges: every text tokenises, built offline."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=77)


def clip_text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                          vocab_size=len(byte_level_vocab()), max_position_embeddings=77, projection_dim=16,
                          bos_token_id=512, eos_token_id=513, pad_token_id=513)


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory) -> Path:
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(0)
    sam = _build_sam(checkpoint=None, **TINY_SAM.model_dump())
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def inpaint_dir(tmp_path_factory) -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=9, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8)
    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=CLIPTextModel(clip_text_config()), tokenizer=clip_tokenizer(), unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    path = tmp_path_factory.mktemp("inpaint")
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    torch.manual_seed(0)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=2, projection_dim=16)
    model = CLIPModel(CLIPConfig(text_config=clip_text_config().to_dict(), vision_config=vision.to_dict(), projection_dim=16))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
                              tokenizer=clip_tokenizer())
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def owl_dir(tmp_path_factory) -> Path:
    """A tiny random OWLv2 (transformers) saved like google/owlv2-base-patch16-ensemble."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    torch.manual_seed(0)
    text = clip_text_config().to_dict() | {"max_position_embeddings": 16}
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
    tokenizer = clip_tokenizer()
    tokenizer.model_max_length = 16
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    path = tmp_path_factory.mktemp("owlv2")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory) -> Path:
    from transformers import GPT2Tokenizer, LlamaConfig, LlamaForCausalLM

    vocab = {ch: i for i, ch in enumerate(sorted(__import__("tokenizers").pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                              eos_token="<|endoftext|>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=512, bos_token_id=len(vocab) - 1,
                                         eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1))
    path = tmp_path_factory.mktemp("llm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _samples(out: Path):
    return list(read_samples(out))


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _reasons(out: Path) -> set[str]:
    return {json.loads(line)["reason"] for line in (out / "rejects.jsonl").read_text().splitlines()}


def test_tiny_sam_loads_by_path_and_segments(sam_checkpoint, scenes, tmp_path):
    from pipeline.synthetic.masks import load_sam

    sam = load_sam("vit_b", sam_checkpoint, TINY_SAM)
    saved = torch.load(sam_checkpoint)
    assert all(torch.equal(v, saved[k]) for k, v in sam.state_dict().items())
    with pytest.raises(FileNotFoundError, match="sam_checkpoint"):
        load_sam("vit_h", tmp_path / "missing.pth")

    cfg = SyntheticConfig(scenarios=FEW, leakage_guard=False, sam_checkpoint=str(sam_checkpoint), sam_arch=TINY_SAM, sam_min_iou=0.0,
                          mask_min_area=0.0, min_edit_strength=0.0)
    build(cfg, BuildInputs(input=str(scenes)), tmp_path / "sam")
    samples = _samples(tmp_path / "sam")
    assert samples
    for _, meta, files in samples:
        assert meta["mask_source"] == "sam" and meta["models"]["sam"] == "sam-custom:sam_tiny.pth"
        assert 0.0 <= meta["scores"]["sam_iou"] <= 1.0
        src, tgt, mask = _decode(files["src.png"]), _decode(files["tgt.png"]), _decode(files["mask.png"]) > 127
        assert np.array_equal(src[~mask], tgt[~mask])

    # all boxes of an image in one decoder call give what one call per box gives
    from pipeline.synthetic.masks import SamMasker
    from pipeline.synthetic.scene import load_index, read_rgb, resolve_inputs

    (split,), _ = resolve_inputs(scenes)
    index = load_index(str(split.annotations), str(split.images), split.split, ("mirror",), None)
    image = next(im for im in index.images.values() if im["file_name"] == "three_cats.png")
    anns = index.anns[image["id"]]
    rgb = read_rgb(split.images / image["file_name"])
    masker = SamMasker(sam, "tiny")
    many = masker.segment_many("a", rgb, [a["bbox"] for a in anns], [index.mask(a) for a in anns])
    single = [SamMasker(sam, "tiny").segment("b", rgb, a["bbox"], index.mask(a)) for a in anns]
    for (m1, iou1), (m2, iou2) in zip(many, single):
        assert np.array_equal(m1, m2) and iou1 == pytest.approx(iou2)

    strict = cfg.model_copy(update={"sam_min_iou": 0.999})
    build(strict, BuildInputs(input=str(scenes)), tmp_path / "strict")
    assert "sam_low_iou" in _reasons(tmp_path / "strict")


def test_inpainting_pipeline_from_directory(inpaint_dir, scenes, tmp_path):
    cfg = SyntheticConfig(scenarios=FEW, leakage_guard=False, operations=["replace", "remove"], inpaint_dir=str(inpaint_dir),
                          inpaint_resolution=32, inpaint_steps=2, batch_size=2, min_edit_strength=0.0)
    result = build(cfg, BuildInputs(input=str(scenes)), tmp_path / "a")
    samples = _samples(tmp_path / "a")
    ops = {meta["operation"] for _, meta, _ in samples}
    assert "replace" in ops and "replace_needs_generator" not in _reasons(tmp_path / "a")
    for _, meta, files in samples:
        assert meta["models"]["inpaint"] == str(inpaint_dir) and meta["models"]["editor"].startswith("inpaint:")
        src, tgt, mask = _decode(files["src.png"]), _decode(files["tgt.png"]), _decode(files["mask.png"]) > 127
        assert np.array_equal(src[~mask], tgt[~mask])  # pasted back: background exact
        assert not np.array_equal(src[mask], tgt[mask])
        if meta["operation"] == "replace":
            assert meta["new_object"] in meta["prompt"] and meta["new_object"] in meta["instruction"]
    # seeded per pair: batch size does not matter for which noise a pair gets, and reruns are identical
    build(cfg, BuildInputs(input=str(scenes)), tmp_path / "b")
    a = json.loads(Path(result["manifest"]).read_text())["shardlist"]
    b = json.loads((tmp_path / "b" / "shardindex.json").read_text())["shardlist"]
    assert [s["sha256"] for s in a] == [s["sha256"] for s in b]


def test_clip_direction_filter(clip_dir, scenes, tmp_path):
    cfg = SyntheticConfig(scenarios=FEW, leakage_guard=False, clip_dir=str(clip_dir), clip_direction_min=-1.0, clip_crop_min=0.0)
    build(cfg, BuildInputs(input=str(scenes)), tmp_path / "lenient")
    samples = _samples(tmp_path / "lenient")
    assert samples
    for _, meta, _ in samples:
        assert -1.0 <= meta["scores"]["clip_direction"] <= 1.0 and meta["models"]["clip"] == str(clip_dir)
        if meta["operation"] != "remove":
            assert 0.0 <= meta["scores"]["clip_crop"] <= 100.0
    build(cfg.model_copy(update={"clip_crop_min": 100.01}), BuildInputs(input=str(scenes)), tmp_path / "crop")
    assert "clip_crop_low" in _reasons(tmp_path / "crop")
    build(cfg.model_copy(update={"clip_direction_min": 1.01}), BuildInputs(input=str(scenes)), tmp_path / "strict")
    assert "clip_direction_low" in _reasons(tmp_path / "strict") and not _samples(tmp_path / "strict")


def test_clip_crop_and_direction_scores_match_a_direct_computation(clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    from pipeline.synthetic.clip_direction import ClipDirection, mask_box_crop

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[5:20, 10:30] = True
    assert mask_box_crop(image, mask).shape == (15, 20, 3)
    assert mask_box_crop(image, mask, official=True).shape == (14, 19, 3)  # the official script's off-by-one
    scorer = ClipDirection(clip_dir)
    model, proc = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        img = model.get_image_features(**proc(images=[image[5:20, 10:30].copy()], return_tensors="pt")).pooler_output
        tok = proc(text=["a red dog"], return_tensors="pt", padding=True)
        txt = model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
    cos = float(torch.nn.functional.cosine_similarity(img, txt)[0])
    (crop,) = scorer.crop_scores([image], [mask], ["a red dog"])
    assert crop == pytest.approx(100 * max(cos, 0.0), abs=1e-3)
    batched = scorer.direction_scores([image, other], [other, image], ["a", "b"], ["c", "d"])
    assert batched == pytest.approx([scorer.score(image, other, "a", "c"), scorer.score(other, image, "b", "d")], abs=1e-5)


def test_open_vocabulary_detector_scores_a_region(owl_dir):
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    from pipeline.synthetic.detector import OpenVocabDetector

    image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    detector = OpenVocabDetector(owl_dir)
    scores = detector.region_scores(image, (0, 0, 30, 40), ["dog", "a cat"])
    # independently: the model's own outputs, boxes centred in the left half (OWLv2 pads to 60 x 60)
    model, proc = Owlv2ForObjectDetection.from_pretrained(owl_dir).eval(), Owlv2Processor.from_pretrained(owl_dir)
    with torch.no_grad():
        out = model(**proc(text=[["dog", "a cat"]], images=[image], return_tensors="pt", padding=True))
    probs, cx, cy = torch.sigmoid(out.logits[0]), out.pred_boxes[0, :, 0] * 60, out.pred_boxes[0, :, 1] * 60
    inside = (cx <= 30) & (cy <= 40)
    expect = [float(probs[inside, i].max()) if inside.any() else 0.0 for i in range(2)]
    assert [scores["dog"], scores["a cat"]] == pytest.approx(expect, abs=1e-5)


def test_detector_verifies_removals(owl_dir, scenes, tmp_path):
    cfg = SyntheticConfig(scenarios=FEW, leakage_guard=False, operations=["remove"], detector_dir=str(owl_dir), detector_threshold=0.0)
    build(cfg, BuildInputs(input=str(scenes)), tmp_path / "strict")  # every score ≥ 0: the object is "still there"
    assert "still_detected" in _reasons(tmp_path / "strict") and not _samples(tmp_path / "strict")
    build(cfg.model_copy(update={"detector_threshold": 1.01}), BuildInputs(input=str(scenes)), tmp_path / "lenient")
    samples = _samples(tmp_path / "lenient")
    assert samples and all(0.0 <= m["scores"]["detector_old"] <= 1.0 for _, m, _ in samples)


def test_llm_paraphraser_runs_and_keeps_templates(llm_dir, scenes, tmp_path):
    cfg = SyntheticConfig(scenarios=FEW, leakage_guard=False, llm_dir=str(llm_dir), llm_max_new_tokens=12, n_instructions=3)
    build(cfg, BuildInputs(input=str(scenes)), tmp_path / "llm")
    samples = _samples(tmp_path / "llm")
    assert samples
    for _, meta, _ in samples:
        assert meta["models"]["llm"] == str(llm_dir)
        templates = [i for i in meta["instructions"] if i not in meta["llm_paraphrases"]]
        assert len(templates) == 3  # garbage from a random LM never replaces the templates
