"""The synthetic build's one typed config (pydantic: it crosses the CLI and the Prefect boundary).

    SyntheticConfig(scenarios={"left_right": 50, "reasoning": 50}, seed=0)            # CPU editor
    SyntheticConfig.preset("sd15")  # inpainting at 512 px, 50 steps (set inpaint_dir, sam_checkpoint)
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.vocabulary import SCENARIO_FOLDERS

Scenario = Literal["left_right", "relative_size", "colour", "mirror", "multiple_objects", "reasoning"]
Operation = Literal["replace", "remove", "recolour"]
SCENARIOS: tuple[str, ...] = ("left_right", "relative_size", "colour", "mirror", "multiple_objects", "reasoning")
OPERATIONS: tuple[str, ...] = ("replace", "remove", "recolour")
# Reason-Edit's folder names for the same categories (data card, exports).
REASON_EDIT_FOLDERS = SCENARIO_FOLDERS


class SamArch(BaseModel):
    """A SAM image-encoder architecture beyond the registry's vit_h/vit_l/vit_b (tests: tiny random SAMs).

    Built by segment_anything's own builder, the one its registry entries call, so a custom checkpoint
    loads through the same code path as the official ones.
    """

    model_config = ConfigDict(extra="forbid")
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: list[int]


class SyntheticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    BEFORE_ISSUE_14: ClassVar[dict[str, Any]] = dict(removal="biharmonic", remove_dilate_px=5, replace_mask="object",
                                                      feather_px=0, best_of=1, verify=False)
    """The settings the builder had before edit verification (bench/synthetic_quality.py --before)."""

    scenarios: dict[Scenario, int] = Field(default_factory=lambda: {s: 100 for s in SCENARIOS})
    """Scenario → the most pairs to plan for it (0 disables it)."""
    operations: list[Operation] | None = None
    """Edit operations to draw from; None: all three with an inpainting model, remove + recolour without."""
    seed: int = 0
    """Seeds image order, target and operation choices, templates and each pair's generator."""
    n_instructions: int = 4
    """Template paraphrases per pair (LLM paraphrases are added on top)."""
    shard_size: int = 64
    """Planned pairs per output shard (the unit of work and of resumption)."""

    mirror_categories: list[str] = Field(default_factory=lambda: ["mirror"])
    """Annotation category names whose instances are mirror regions, not objects."""
    position_margin: float = 0.05
    """Left/right/ordinal picks need centroids this far apart (fraction of the image width)."""
    size_ratio: float = 1.5
    """Relative size: the target's area must differ from the next one's by at least this factor."""
    colour_min_share: float = 0.5
    """An object has a dominant colour when at least this share of its pixels is nearest to that name."""

    mask_min_area: float = 0.01
    """Kept masks cover at least this fraction of the image (UltraEdit: 1 %)."""
    mask_max_area: float = 0.90
    """Kept masks cover at most this fraction of the image (UltraEdit: 90 %)."""
    dilate_px: int = 5
    """Mask dilation for recolour and replace (covers SAM's and the annotation's boundary errors)."""
    remove_dilate_px: int = 15
    """Mask dilation for removal (AnyEdit: ≈15 px), so no rim or shadow of the object is left."""
    replace_mask: Literal["box", "object"] = "box"
    """Replace inside the object's box (the new object need not fit the old outline) or its outline."""
    feather_px: int = 3
    """Edited pixels fade in over this many pixels inside the edit mask (no hard seam); 0: hard paste-back."""
    removal: Literal["ns", "telea", "biharmonic"] = "ns"
    """CPU removal: OpenCV Navier–Stokes or Telea inpainting, or scikit-image's biharmonic (the old default)."""
    best_of: int = 3
    """Candidates per pair (seeds with an inpainting model; removal method / dilation on CPU); the one that
    verifies best is kept, the failed ones are written as labelled negatives."""
    min_edit_strength: float = 8.0
    """Mean CIE76 ΔE between source and target inside the mask; below it the edit "did nothing"."""
    background_tolerance: int = 0
    """Largest allowed per-channel difference outside the mask (0: bit-exact, which paste-back guarantees)."""
    clip_direction_min: float = 0.22
    """CLIP directional similarity threshold (UltraEdit 0.22; InstructPix2Pix 0.2). Needs clip_dir."""

    sam_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_h"
    """segment_anything registry architecture of sam_checkpoint."""
    sam_checkpoint: str | None = None
    """Path of a SAM checkpoint (official .pth); None: the annotation mask is the edit mask."""
    sam_arch: SamArch | None = None
    """Overrides sam_type's architecture (tiny test models)."""
    sam_min_iou: float = 0.5
    """SAM's best box mask must overlap the annotation at least this much, else the pair is dropped."""

    inpaint_dir: str | None = None
    """A diffusers inpainting pipeline directory (save_pretrained layout); None: the CPU editor only."""
    inpaint_resolution: int = 512
    """Inpainting resolution in pixels (multiple of 8; SD-1.5 inpainting: 512)."""
    inpaint_steps: int = 50
    """Inpainting denoising steps."""
    guidance_scale: float = 7.5
    """Inpainting classifier-free guidance scale."""
    cross_category_share: float = 0.5
    """Share of replacements drawn from data_specs/replace_swaps.yaml ("the person" → "a dog") when the
    category has swaps; the rest stay within its kind (knowledge.yaml)."""
    replace_colour_share: float = 0.5
    """Share of replacements that also name a colour ("a white fox")."""
    recolour_with: Literal["lab", "inpaint"] = "lab"
    """Recolour by a CIELAB shift (exact shape) or by inpainting "a red dog"."""

    clip_dir: str | None = None
    """A transformers CLIPModel + processor directory for the direction filter and the crop score; None: both skipped."""
    clip_crop_min: float = 20.0
    """Replace / recolour: CLIP score (100·cos, Reason-Edit's) of the edited crop against the target description."""

    verify: bool = True
    """Verify every candidate edit (pipeline/synthetic/verify.py) and keep the best; False: keep the first."""
    remove_ring_max_de: float = 3.0
    """Removal: 90th percentile ΔE of filled pixels to their nearest background pixel, both smoothed (σ 1.5 px).
    3.0 keeps only fills within a JPEG's noise of the clean plate on the sample scenes; calibrate it on labels
    (`smartedit synthetic calibrate`) for real photos."""
    remove_max_object_like: float = 0.1
    """Removal: largest share of filled pixels nearer in colour to the removed object than to the background."""
    recolour_min_l_corr: float = 0.8
    """Recolour: correlation of the object's L* before and after (its shading kept)."""
    detector_dir: str | None = None
    """An open-vocabulary detector directory (transformers OWLv2 / OWL-ViT, save_pretrained layout); None: CPU rules only."""
    detector_threshold: float = 0.1
    """Detector score at or above which an object counts as present in the edited region."""
    llm_dir: str | None = None
    """A local causal LM directory for extra paraphrases; None: templates only."""
    llm_max_new_tokens: int = 40
    """Most new tokens per LLM paraphrase."""

    device: str = "cpu"
    """Device for SAM, inpainting, CLIP and the LLM (cpu, cuda, cuda:1)."""
    batch_size: int = 4
    """Pairs per inpainting call."""
    eval_sets: list[str] = Field(default_factory=list)
    """Evaluation sets to keep out: Reason-Edit directories, MagicBrush test (its released directory with
    edit_sessions.json, or parquet). Required while leakage_guard is on (retraining passes its benchmark)."""
    leakage_guard: bool = True
    """Drop source images that match an evaluation image (hash variants: flips, crops, padding; COCO image
    ids). On by default: planning refuses to start without eval_sets unless this is set to False."""
    phash_max_distance: int = 4
    """A source image within this Hamming distance (64-bit pHash) of any variant of an evaluation image is
    dropped (4: crops up to 10 % per side, padding and flips caught; unrelated sample scenes are ≥ 6 apart)."""

    @field_validator("scenarios")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v < 0}
        if bad:
            raise ValueError(f"scenarios: counts must be ≥ 0, got {bad}")
        return value

    @model_validator(mode="after")
    def _check(self) -> "SyntheticConfig":
        if not 0 <= self.mask_min_area < self.mask_max_area <= 1:
            raise ValueError(f"mask_min_area/mask_max_area: need 0 ≤ min < max ≤ 1, got {self.mask_min_area}, {self.mask_max_area}")
        if self.size_ratio <= 1:
            raise ValueError(f"size_ratio: must be > 1, got {self.size_ratio}")
        if self.batch_size < 1 or self.shard_size < 1 or self.n_instructions < 1 or self.best_of < 1:
            raise ValueError("batch_size, shard_size, n_instructions and best_of must be ≥ 1")
        if self.inpaint_resolution % 8:
            raise ValueError(f"inpaint_resolution: must be a multiple of 8, got {self.inpaint_resolution}")
        return self

    def effective_operations(self) -> list[str]:
        if self.operations is not None:
            return list(self.operations)
        return list(OPERATIONS) if self.inpaint_dir else ["remove", "recolour"]

    @classmethod
    def preset(cls, name: Literal["tiny", "sd15"], **overrides) -> "SyntheticConfig":
        """`tiny`: small counts for smoke runs; `sd15`: SD-1.5 inpainting at 512 px, 50 steps, batch 8."""
        presets = {
            "tiny": dict(scenarios={s: 4 for s in SCENARIOS}, shard_size=8, n_instructions=3),
            "sd15": dict(inpaint_resolution=512, inpaint_steps=50, batch_size=8, device="cuda"),
        }
        if name not in presets:
            raise ValueError(f"preset {name!r}: expected one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})
