"""Pins the synthetic stages' model wrappers against independent computations: the CLIP direction score's sign, the
box SAM receives (xyxy, spied on the real predictor) and the IoU reported, and the CPU `torchvision::nms` kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.synthetic.masks import SamMasker, mask_iou

torch.set_num_threads(1)


# -- torchvision::nms on CPU --------------------------------------------------------------------------------------------
def _nms_numpy(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Textbook greedy NMS (highest score first; drop every box whose IoU with a kept one exceeds thr)."""
    keep: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        ok = True
        for j in keep:
            ix = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            iy = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = ix * iy
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(int(i))
    return keep


def test_cpu_nms_op_matches_hand_computed_and_independent_results():
    """The op the compat hook defines (what torchvision's meta registrations and SAM's code paths call). Note:
    torchvision.ops.nms's Python wrapper still refuses to run (its C++-extension check fails on CPU torch)."""
    import torchvision  # noqa: F401  (importing it must work: the hook defines the op first)

    nms = torch.ops.torchvision.nms
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10], [5, 0, 15, 10]],
                         dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.6])
    # IoU(3, 0) = 1, IoU(3, 1) = 81/119 = 0.68, IoU(3, 4) = 50/150 = 0.33, box 2 overlaps nothing
    assert nms(boxes, scores, 0.5).tolist() == [3, 2, 4]
    assert nms(boxes, scores, 0.3).tolist() == [3, 2]
    assert nms(boxes, scores, 0.7).tolist() == [3, 1, 2, 4]  # 0.68 is not above 0.7
    assert nms(boxes, scores, 0.5).dtype == torch.int64
    # IoU exactly at the threshold is kept (torchvision suppresses only IoU > threshold): 50 / 100 = 0.5
    half = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=torch.float32)
    assert nms(half, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(half, torch.tensor([0.9, 0.8]), 0.49).tolist() == [0]
    rng = np.random.default_rng(0)
    for _ in range(5):
        xy = rng.uniform(0, 50, (40, 2))
        wh = rng.uniform(1, 30, (40, 2))
        b = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        s = rng.permutation(40).astype(np.float32) / 40  # distinct scores: a unique order
        for thr in (0.1, 0.5, 0.8):
            assert nms(torch.from_numpy(b), torch.from_numpy(s), thr).tolist() == _nms_numpy(b, s, thr)


# -- SAM ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sam():
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(0)
    return _build_sam(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1],
                      checkpoint=None).eval()


def test_sam_receives_the_box_as_xyxy_and_the_iou_is_recomputed(tiny_sam, monkeypatch):
    """Spy on the real predictor: the boxes handed to SAM's resize transform are xyxy in image pixels."""
    masker = SamMasker(tiny_sam, "tiny")
    boxes_seen, candidates_seen = [], []
    transform = masker.predictor.transform
    real_apply, real_predict = transform.apply_boxes_torch, masker.predictor.predict_torch

    def apply_spy(boxes, original_size):
        boxes_seen.append((boxes.clone().cpu().numpy(), tuple(original_size)))
        return real_apply(boxes, original_size)

    def predict_spy(*args, **kw):
        out = real_predict(*args, **kw)
        candidates_seen.append(out[0].cpu().numpy())
        return out

    monkeypatch.setattr(transform, "apply_boxes_torch", apply_spy)
    monkeypatch.setattr(masker.predictor, "predict_torch", predict_spy)
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    reference = np.zeros((48, 64), bool)
    reference[10:30, 5:25] = True  # the annotation: x 5..25, y 10..30 → xywh (5, 10, 20, 20)
    mask, iou = masker.segment("img-1", rgb, (5, 10, 20, 20), reference)
    np.testing.assert_array_equal(boxes_seen[0][0], np.array([[5, 10, 25, 30]], dtype=np.float32))
    assert boxes_seen[0][1] == (48, 64)
    candidates = candidates_seen[0][0]  # (3, H, W): multimask output for the one box
    assert candidates.shape == (3, 48, 64)
    ious = [np.logical_and(c, reference).sum() / max(np.logical_or(c, reference).sum(), 1) for c in candidates]
    assert iou == pytest.approx(max(ious)) and mask.dtype == bool and mask.shape == reference.shape
    assert np.array_equal(mask, candidates[int(np.argmax(ious))].astype(bool))
    # several boxes of one image: one call, each box converted
    masker.segment_many("img-1", rgb, [(0, 0, 8, 8), (30, 5, 10, 20)], [reference, reference])
    np.testing.assert_array_equal(boxes_seen[1][0], np.array([[0, 0, 8, 8], [30, 5, 40, 25]], dtype=np.float32))
    # the same image key reuses the embedding; another key recomputes it
    calls = []
    monkeypatch.setattr(masker.predictor, "set_image", lambda im: calls.append(im.shape))
    masker.segment("img-1", rgb, (0, 0, 8, 8), reference)
    masker.segment("img-2", rgb, (0, 0, 8, 8), reference)
    assert calls == [(48, 64, 3)]


def test_mask_iou_independent():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True  # 8 px
    b[1:3] = True  # 8 px, 4 shared
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    assert mask_iou(a, a) == 1.0 and mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0


# -- CLIP direction -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from test_synthetic_models import clip_text_config, clip_tokenizer  # the suite's offline tiny CLIP parts
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    torch.manual_seed(0)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=2, projection_dim=16)
    model = CLIPModel(CLIPConfig(text_config=clip_text_config().to_dict(), vision_config=vision.to_dict(),
                                 projection_dim=16))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
                              tokenizer=clip_tokenizer())
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_clip_direction_score_sign_against_clip_forward(clip_dir):
    from pipeline.synthetic.clip_direction import ClipDirection

    scorer = ClipDirection(clip_dir)
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    tgt = src.copy()
    tgt[8:24, 8:24] = [255, 0, 0]
    cap_s, cap_t = "a grey square", "a red square"
    score = scorer.score(src, tgt, cap_s, cap_t)
    # independent: CLIPModel.forward's own normalised embeddings (another code path than get_*_features)
    inputs = scorer.processor(text=[cap_s, cap_t], images=[src, tgt], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = scorer.model(**inputs)
    ie, te = out.image_embeds.double().numpy(), out.text_embeds.double().numpy()
    d_img, d_txt = ie[1] - ie[0], te[1] - te[0]
    expected = float(d_img @ d_txt / np.linalg.norm(d_img) / np.linalg.norm(d_txt))
    assert abs(expected) > 1e-3  # a sign to check
    assert score == pytest.approx(expected, abs=1e-4)
    # swapping the images flips the direction; swapping both pairs restores it
    assert scorer.score(tgt, src, cap_s, cap_t) == pytest.approx(-expected, abs=1e-4)
    assert scorer.score(tgt, src, cap_t, cap_s) == pytest.approx(expected, abs=1e-4)
