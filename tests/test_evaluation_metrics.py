"""Reason-Edit metrics against independent numpy computations: PSNR, SSIM, the official and corrected protocols,
crop boxes, CLIP score through a tiny random CLIP on disk, LPIPS from a local weights directory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from evaluation_fixtures import box_mask, make_tiny_clip, make_tiny_lpips, pattern_image
from PIL import Image

from model.evaluation.lpips import LpipsWeightsMissing, load_lpips
from model.evaluation.metrics import MetricsConfig, ReasonEditMetrics, exact_crop_box, official_crop_box

torch.set_num_threads(1)
S = 256  # images already at the metric size, so the resize step is an exact copy


# ---------------------------------------------------------------- independent reference formulas (numpy)
def np_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def np_ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM map (H, W, C) with an 11×11 Gaussian window (σ 1.5), reflect padding, data range 1."""
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    g /= g.sum()

    def blur(img: np.ndarray) -> np.ndarray:
        p = np.pad(img, ((5, 5), (5, 5), (0, 0)), mode="reflect")
        rows = np.lib.stride_tricks.sliding_window_view(p, 11, axis=0) @ g  # (H, W+10, C)
        return np.lib.stride_tricks.sliding_window_view(rows, 11, axis=1) @ g  # (H, W, C)

    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = blur(a), blur(b)
    var_a = np.maximum(blur(a * a) - mu_a**2, 0)
    var_b = np.maximum(blur(b * b) - mu_b**2, 0)
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def as_float(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.float64) / 255.0


def mid_range_image(seed: int) -> Image.Image:
    """Values in [40, 200], so a ±30 change never clips."""
    a = np.asarray(pattern_image(seed, S), dtype=np.float64)
    return Image.fromarray((40 + a * 160 / 255).astype(np.uint8), "RGB")


def add(im: Image.Image, delta_bg: int, delta_region: int, mask: Image.Image) -> Image.Image:
    a = np.asarray(im, dtype=np.int16)
    region = (np.asarray(mask) > 127)[..., None]
    return Image.fromarray((a + np.where(region, delta_region, delta_bg)).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def pixel_only() -> dict[str, ReasonEditMetrics]:
    return {p: ReasonEditMetrics.build(MetricsConfig(protocol=p)) for p in ("official", "corrected")}


# ---------------------------------------------------------------- PSNR / SSIM
def test_corrected_psnr_of_a_known_background_shift(pixel_only):
    image, mask = mid_range_image(1), box_mask(S, (60, 80, 180, 200))
    output = add(image, 10, 30, mask)  # background +10/255 everywhere: PSNR = 20·log10(255/10)
    scores = pixel_only["corrected"].score(image, output, mask, None)
    assert scores.psnr == pytest.approx(20 * math.log10(255 / 10), abs=1e-3)
    assert scores.lpips is None and scores.clip is None  # no weight directories: n/a, not a crash


def test_official_reproduces_the_released_formulas(pixel_only):
    image, output = mid_range_image(2), mid_range_image(3)
    # a JPEG-like mask: soft edge values and faint noise in the background, NOT binarised by the official script
    m = np.asarray(box_mask(S, (50, 50, 150, 170)), dtype=np.uint8).copy()
    m[49, 50:150] = 90
    m[10, 10] = 3
    mask = Image.fromarray(m, "L")
    keep = (1.0 - m / 255.0)[..., None]
    a, b = as_float(image) * keep, as_float(output) * keep
    scores = pixel_only["official"].score(image, output, mask, None)
    assert scores.psnr == pytest.approx(np_psnr(a, b), abs=1e-3)
    # torchmetrics <= 1.4.1 (the released script's) cropped a 5-px border off the SSIM map before averaging
    assert scores.ssim == pytest.approx(float(np_ssim_map(a, b)[5:-5, 5:-5].mean()), abs=1e-6)
    assert scores.ssim != pytest.approx(float(np_ssim_map(a, b).mean()), abs=1e-4)


def test_corrected_ssim_is_the_ssim_map_averaged_over_background(pixel_only):
    image, mask = mid_range_image(4), box_mask(S, (30, 40, 120, 160))
    output = add(mid_range_image(4), 6, -30, mask)
    output = Image.fromarray(np.clip(np.asarray(output, np.int16) + np.asarray(mid_range_image(5), np.int16) // 20, 0, 255).astype(np.uint8))
    background = np.asarray(mask) <= 127
    # the input's edit region is composited into the output first, so windows at the mask edge see no edit
    composite = np.where(background[..., None], as_float(output), as_float(image))
    expected = np_ssim_map(as_float(image), composite)[background].mean()
    scores = pixel_only["corrected"].score(image, output, mask, None)
    assert scores.ssim == pytest.approx(float(expected), abs=1e-4)
    bg = background[..., None].repeat(3, axis=2)
    assert scores.psnr == pytest.approx(np_psnr(as_float(image)[bg], as_float(output)[bg]), abs=1e-3)


def test_corrected_differs_from_official_where_it_should(pixel_only):
    image, mask = mid_range_image(6), box_mask(S, (60, 60, 200, 200))
    output = add(image, 8, 30, mask)
    official = pixel_only["official"].score(image, output, mask, None)
    corrected = pixel_only["corrected"].score(image, output, mask, None)
    # official counts the zeroed edit region as perfectly preserved pixels: higher PSNR for the same edit
    assert official.psnr > corrected.psnr + 1.0
    region_fraction = (np.asarray(mask) > 127).mean()
    assert official.psnr - corrected.psnr == pytest.approx(-10 * math.log10(1 - region_fraction), abs=1e-2)


def test_identical_images_cap_psnr_and_note_it(pixel_only):
    image, mask = mid_range_image(7), box_mask(S, (10, 10, 60, 60))
    for protocol in ("official", "corrected"):
        scores = pixel_only[protocol].score(image, image.copy(), mask, None)
        assert scores.psnr == MetricsConfig().psnr_cap_db and math.isfinite(scores.psnr)
        assert scores.ssim == pytest.approx(1.0, abs=1e-3)  # float32 variance cancellation inside torchmetrics
        assert any("capped" in n for n in scores.notes)


def test_fully_masked_image_is_defined(pixel_only):
    image, output = mid_range_image(8), mid_range_image(9)
    mask = Image.new("L", (S, S), 255)
    corrected = pixel_only["corrected"].score(image, output, mask, None)
    assert corrected.psnr is None and corrected.ssim is None and corrected.lpips is None
    assert any("no background" in n for n in corrected.notes)
    official = pixel_only["official"].score(image, output, mask, None)  # both images all zero after (1 − mask)
    assert official.psnr == MetricsConfig().psnr_cap_db
    assert official.ssim == pytest.approx(1.0, abs=1e-3)


def test_inputs_of_other_sizes_are_resized_like_the_released_script(pixel_only):
    image, mask = pattern_image(10, 64), box_mask(64, (8, 8, 40, 40))
    output = add(image, 5, 40, mask)
    inp = as_float(image.resize((S, S), Image.Resampling.BICUBIC))
    out = as_float(output.resize((S, S), Image.Resampling.BICUBIC))
    m = np.asarray(mask.resize((S, S), Image.Resampling.NEAREST), dtype=np.float64)
    keep = (1 - m / 255)[..., None]
    assert pixel_only["official"].score(image, output, mask, None).psnr == pytest.approx(np_psnr(inp * keep, out * keep), abs=1e-3)


# ---------------------------------------------------------------- crop boxes
def test_crop_boxes_official_off_by_one_and_noise_versus_exact():
    m = np.asarray(box_mask(S, (10, 20, 50, 60)), dtype=np.uint8).copy()
    assert official_crop_box(m) == (10, 20, 49, 59)  # PIL end-exclusive: last row and column dropped
    assert exact_crop_box(m > 127) == (10, 20, 50, 60)
    m[200, 230] = 4  # JPEG noise: widens the official box only
    assert official_crop_box(m) == (10, 20, 230, 200)
    assert exact_crop_box(m > 127) == (10, 20, 50, 60)
    assert official_crop_box(np.zeros((S, S), np.uint8)) is None


# ---------------------------------------------------------------- CLIP
def test_clip_score_matches_an_independent_computation(tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    clip_dir = make_tiny_clip(tmp_path / "clip")
    metrics = ReasonEditMetrics.build(MetricsConfig(protocol="corrected"), clip_dir=clip_dir)
    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    image, mask = mid_range_image(11), box_mask(S, (40, 30, 140, 190))
    output = add(image, 0, 25, mask)
    crop = output.crop((40, 30, 140, 190))
    texts = ["a red cat", "two dogs", "the left cup", "a mirror", "blue sky", "green apple"]
    expected_scores, got_scores = [], []
    with torch.no_grad():
        pixels = processor(images=[crop], return_tensors="pt")["pixel_values"]
        img_emb = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)[0].numpy()
        for text in texts:
            tok = processor(text=[text], return_tensors="pt")
            txt_emb = model.text_projection(model.text_model(**tok).pooler_output)[0].numpy()
            cos = float(img_emb @ txt_emb / (np.linalg.norm(img_emb) * np.linalg.norm(txt_emb)))
            expected_scores.append(100 * max(cos, 0.0))
            got_scores.append(metrics.score(image, output, mask, text).clip)
    assert got_scores == pytest.approx(expected_scores, abs=0.05)
    assert any(s > 0 for s in expected_scores)


# ---------------------------------------------------------------- LPIPS
def np_lpips_alex(state: dict, heads: dict, a: np.ndarray, b: np.ndarray) -> float:
    """LPIPS(alex) written out: scaling layer, AlexNet conv/ReLU/maxpool stages, unit-normalised features,
    squared differences weighted by the linear heads, spatial mean, summed over the five stages."""
    import torch.nn.functional as F

    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - shift) / scale
        out = []
        for i, (stride, pad, pool) in zip((0, 3, 6, 8, 10), ((4, 2, False), (1, 2, True), (1, 1, True), (1, 1, False), (1, 1, False))):
            if pool:
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], stride=stride, padding=pad))
            out.append(x)
        return out

    total = 0.0
    with torch.no_grad():
        fa, fb = feats(torch.from_numpy(a).float()), feats(torch.from_numpy(b).float())
        for k, (x, y) in enumerate(zip(fa, fb)):
            x = x / torch.sqrt(1e-8 + (x**2).sum(1, keepdim=True))
            y = y / torch.sqrt(1e-8 + (y**2).sum(1, keepdim=True))
            w = heads[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
            total += float(((x - y) ** 2 * w).sum(1).mean())
    return total


def test_lpips_from_local_dir_matches_the_written_out_formula(tmp_path):
    lpips_dir = make_tiny_lpips(tmp_path / "lpips", "alex")
    net = load_lpips(lpips_dir, "alex")
    state = torch.load(lpips_dir / "alexnet.pth", weights_only=True)
    heads = torch.load(lpips_dir / "alex.pth", weights_only=True)
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.2, a.shape), -1, 1).astype(np.float32)
    with torch.no_grad():
        got = float(net(torch.from_numpy(a), torch.from_numpy(b)).squeeze())
    assert got == pytest.approx(np_lpips_alex(state, heads, a, b), rel=1e-4)
    assert got > 0


def test_lpips_metric_uses_the_protocol_backbone_and_masked_images(tmp_path):
    lpips_dir = make_tiny_lpips(tmp_path / "lpips", "alex")
    make_tiny_lpips(lpips_dir, "squeeze")
    image, mask = mid_range_image(12), box_mask(S, (60, 60, 200, 200))
    output = add(image, 0, 40, mask)  # change only inside the mask
    corrected = ReasonEditMetrics.build(MetricsConfig(protocol="corrected"), lpips_dir=lpips_dir)
    official = ReasonEditMetrics.build(MetricsConfig(protocol="official"), lpips_dir=lpips_dir)
    assert type(corrected.lpips.net).__name__ == "Alexnet" and type(official.lpips.net).__name__ == "SqueezeNet"
    # background untouched: both protocols zero the edit region, so LPIPS is 0 up to float error
    assert corrected.score(image, output, mask, None).lpips == pytest.approx(0.0, abs=1e-6)
    assert official.score(image, output, mask, None).lpips == pytest.approx(0.0, abs=1e-6)
    changed = add(image, 12, 40, mask)
    assert corrected.score(image, changed, mask, None).lpips > 1e-4


def test_missing_lpips_backbone_names_the_file(tmp_path):
    lpips_dir = make_tiny_lpips(tmp_path / "lpips", "alex")
    (lpips_dir / "alexnet.pth").unlink()
    with pytest.raises(LpipsWeightsMissing, match="alexnet.pth"):
        load_lpips(lpips_dir, "alex")
    with pytest.raises(LpipsWeightsMissing, match="squeezenet1_1.pth"):
        ReasonEditMetrics.build(MetricsConfig(protocol="official"), lpips_dir=lpips_dir)


def test_lpips_heads_default_to_the_copy_torchmetrics_ships(tmp_path):
    with_heads = load_lpips(make_tiny_lpips(tmp_path / "a", "alex", heads=True), "alex")
    bundled = load_lpips(make_tiny_lpips(tmp_path / "b", "alex", heads=False), "alex")
    x, y = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert float(with_heads(x, y).squeeze()) != pytest.approx(float(bundled(x, y).squeeze()), rel=1e-3)
    assert torch.equal(with_heads.net.slice1[0].weight, bundled.net.slice1[0].weight)  # same seed, same backbone


# ---------------------------------------------------------------- corrected protocol: background only
def np_lpips_alex_map(state: dict, heads: dict, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The spatial LPIPS(alex) map (H, W): each stage's head-weighted squared feature difference, bilinearly
    upsampled to the image (original LPIPS ``spatial=True``), summed over stages."""
    import torch.nn.functional as F

    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - shift) / scale
        out = []
        for i, (stride, pad, pool) in zip((0, 3, 6, 8, 10), ((4, 2, False), (1, 2, True), (1, 1, True), (1, 1, False), (1, 1, False))):
            if pool:
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], stride=stride, padding=pad))
            out.append(x)
        return out

    total = torch.zeros(1, 1, *a.shape[-2:], dtype=torch.float64)
    with torch.no_grad():
        fa, fb = feats(torch.from_numpy(a).float()), feats(torch.from_numpy(b).float())
        for k, (x, y) in enumerate(zip(fa, fb)):
            x = x / torch.sqrt(1e-8 + (x**2).sum(1, keepdim=True))
            y = y / torch.sqrt(1e-8 + (y**2).sum(1, keepdim=True))
            w = heads[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
            layer = ((x - y) ** 2 * w).sum(1, keepdim=True)
            total += F.interpolate(layer, size=a.shape[-2:], mode="bilinear", align_corners=False).double()
    return total[0, 0].numpy()


def to_unit_chw(im: Image.Image) -> np.ndarray:
    return (as_float(im).transpose(2, 0, 1)[None] * 2 - 1).astype(np.float32)


@pytest.fixture(scope="module")
def lpips_dir(tmp_path_factory):
    return make_tiny_lpips(tmp_path_factory.mktemp("lpips"), "alex")


def test_bit_identical_background_scores_ssim_one_and_lpips_zero(lpips_dir):
    image, mask = mid_range_image(20), box_mask(S, (40, 40, 200, 180))
    output = add(image, 0, 60, mask)  # a strong edit inside the mask, the background bit-identical
    metrics = ReasonEditMetrics.build(MetricsConfig(protocol="corrected"), lpips_dir=lpips_dir)
    scores = metrics.score(image, output, mask, None)
    assert scores.ssim == 1.0 and scores.lpips == 0.0 and scores.psnr == MetricsConfig().psnr_cap_db
    # without compositing, windows straddling the mask edge see the edit: the old figure was below 1
    background = np.asarray(mask) <= 127
    assert np_ssim_map(as_float(image), as_float(output))[background].mean() < 0.99


def test_corrected_lpips_is_the_spatial_map_averaged_over_background(lpips_dir):
    image, mask = mid_range_image(21), box_mask(S, (90, 60, 220, 200))
    output = add(image, 9, -40, mask)
    background = np.asarray(mask) <= 127
    composite = Image.fromarray(np.where(background[..., None], np.asarray(output), np.asarray(image)))
    state = torch.load(lpips_dir / "alexnet.pth", weights_only=True)
    heads = torch.load(lpips_dir / "alex.pth", weights_only=True)
    expected = np_lpips_alex_map(state, heads, to_unit_chw(image), to_unit_chw(composite))[background].mean()
    metrics = ReasonEditMetrics.build(MetricsConfig(protocol="corrected"), lpips_dir=lpips_dir)
    assert metrics.score(image, output, mask, None).lpips == pytest.approx(float(expected), rel=1e-4)


def test_lpips_does_not_shrink_as_the_mask_grows_for_the_same_damage(lpips_dir):
    image = mid_range_image(22)
    damaged = np.asarray(image, dtype=np.int16).copy()
    damaged[:24, :24] += np.random.default_rng(0).integers(-40, 40, (24, 24, 3))  # fixed background damage
    output = Image.fromarray(np.clip(damaged, 0, 255).astype(np.uint8))
    corrected = ReasonEditMetrics.build(MetricsConfig(protocol="corrected"), lpips_dir=lpips_dir)
    official = ReasonEditMetrics.build(MetricsConfig(protocol="official"), lpips_dir=make_tiny_lpips(lpips_dir, "squeeze"))
    values, areas, diluted = [], [], []
    for left in (232, 160, 112, 48):  # masks growing from the bottom-right corner, never over the damage
        mask = box_mask(S, (left, left - 32, S, S))
        areas.append((np.asarray(mask) > 127).mean())
        values.append(corrected.score(image, output, mask, None).lpips)
        diluted.append(official.score(image, output, mask, None).lpips)
    assert areas[0] < 0.03 and areas[-1] > 0.7
    assert all(b >= a for a, b in zip(values, values[1:])), values
    assert diluted[-1] < diluted[0]  # the released script's all-pixel mean dilutes the same damage


# ---------------------------------------------------------------- instruction following and target metrics
def test_foreground_change_and_l1_to_target_match_numpy(pixel_only):
    image, mask = mid_range_image(23), box_mask(S, (50, 70, 150, 200))
    output = add(image, 3, 35, mask)
    target = add(image, 0, 50, mask)
    scores = pixel_only["corrected"].score(image, output, mask, None, target=target)
    region = np.asarray(mask) > 127
    assert scores.fg_change == pytest.approx(np.abs(as_float(output) - as_float(image))[region].mean(), abs=1e-9)
    assert scores.l1 == pytest.approx(np.abs(as_float(output) - as_float(target)).mean(), abs=1e-9)
    assert pixel_only["corrected"].score(image, image.copy(), mask, None).fg_change == 0.0
    assert scores.clip_direction is None and scores.clip_i is None and scores.dino is None  # no models given


def test_clip_direction_clip_i_and_dino_against_independent_computations(tmp_path):
    from transformers import AutoImageProcessor, CLIPModel, CLIPProcessor, Dinov2Model

    from evaluation_fixtures import make_tiny_dino

    clip_dir, dino_dir = make_tiny_clip(tmp_path / "clip"), make_tiny_dino(tmp_path / "dino")
    metrics = ReasonEditMetrics.build(MetricsConfig(protocol="corrected"), clip_dir=clip_dir, dino_dir=dino_dir)
    image, mask = mid_range_image(24), box_mask(S, (40, 30, 140, 190))
    output, target = add(image, 0, 45, mask), add(image, 0, 60, mask)
    scores = metrics.score(image, output, mask, "a red cup", target=target, source_text="a blue cup")

    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    box = (40, 30, 140, 190)

    def img_emb(ims):
        px = processor(images=ims, return_tensors="pt")["pixel_values"]
        e = model.visual_projection(model.vision_model(pixel_values=px).pooler_output).numpy()
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    def txt_emb(texts):
        tok = processor(text=texts, return_tensors="pt", padding=True)
        e = model.text_projection(model.text_model(**tok).pooler_output).numpy()
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    with torch.no_grad():
        i = img_emb([image.crop(box), output.crop(box)])
        t = txt_emb(["a blue cup", "a red cup"])
        di, dt = i[1] - i[0], t[1] - t[0]
        expected_direction = float(di @ dt / (np.linalg.norm(di) * np.linalg.norm(dt)))
        o = img_emb([output, target])
        expected_clip_i = float(o[0] @ o[1])
        dino, dproc = Dinov2Model.from_pretrained(dino_dir).eval(), AutoImageProcessor.from_pretrained(dino_dir)
        cls = dino(pixel_values=dproc(images=[output, target], return_tensors="pt")["pixel_values"]).pooler_output.numpy()
        expected_dino = float(cls[0] @ cls[1] / (np.linalg.norm(cls[0]) * np.linalg.norm(cls[1])))
    assert scores.clip_direction == pytest.approx(expected_direction, abs=1e-4)
    assert scores.clip_i == pytest.approx(expected_clip_i, abs=1e-4)
    assert scores.dino == pytest.approx(expected_dino, abs=1e-4)
    # a no-op has no image direction: CLIP direction 0; identical output and target: CLIP-I and DINO 1
    noop = metrics.score(image, image.copy(), mask, "a red cup", target=image.copy())
    assert noop.clip_direction == 0.0
    assert noop.clip_i == pytest.approx(1.0, abs=1e-5) and noop.dino == pytest.approx(1.0, abs=1e-5)
