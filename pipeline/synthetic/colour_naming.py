"""Naming an object's dominant colour in CIELAB against the table in data_specs/colours.yaml."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from pipeline.schema import SPECS_DIR

COLOURS_PATH = SPECS_DIR / "colours.yaml"


@dataclass(frozen=True)
class ColourTable:
    names: tuple[str, ...]
    rgb: np.ndarray  # (K, 3) uint8 sRGB
    lab: np.ndarray  # (K, 3) float CIELAB (D65)
    recolour_targets: tuple[str, ...]

    def lab_of(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise ValueError(f"colour {name!r} is not in {COLOURS_PATH}; known: {list(self.names)}")
        return self.lab[self.names.index(name)]

    def name_pixels(self, rgb: np.ndarray) -> tuple[str, float]:
        """The dominant colour of ``rgb`` ((N, 3) uint8): each pixel votes for its nearest name by CIE76 ΔE.

        Returns (name, share of votes). Voting (not the mean colour) keeps highlights and shadows from
        dragging a red object towards brown.
        """
        if len(rgb) == 0:
            raise ValueError("name_pixels: no pixels (empty mask)")
        lab = rgb_to_lab(rgb.reshape(-1, 1, 3)).reshape(-1, 3)
        dist = ((lab[:, None, :] - self.lab[None, :, :]) ** 2).sum(-1)  # (N, K)
        votes = np.bincount(dist.argmin(1), minlength=len(self.names))
        best = int(votes.argmax())
        return self.names[best], float(votes[best] / votes.sum())


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB → (..., 3) float64 CIELAB."""
    from skimage.color import rgb2lab

    return rgb2lab(np.asarray(rgb, dtype=np.float64) / 255.0)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """(H, W, 3) CIELAB → (H, W, 3) uint8 sRGB (out-of-gamut values clipped)."""
    import warnings

    from skimage.color import lab2rgb

    with warnings.catch_warnings():  # out-of-gamut targets are expected; clipping is the intended answer
        warnings.simplefilter("ignore", UserWarning)
        rgb = lab2rgb(lab)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def delta_e(rgb_a: np.ndarray, rgb_b: np.ndarray) -> np.ndarray:
    """Per-pixel CIE76 ΔE between two (..., 3) uint8 images."""
    return np.sqrt(((rgb_to_lab(rgb_a) - rgb_to_lab(rgb_b)) ** 2).sum(-1))


@functools.cache
def load_colour_table(path: Path = COLOURS_PATH) -> ColourTable:
    doc = yaml.safe_load(Path(path).read_text())
    entries = doc.get("colours") if isinstance(doc, dict) else None
    if not entries:
        raise ValueError(f"{path}: needs a non-empty 'colours' list of {{name, rgb}}")
    names, rgbs, targets = [], [], []
    for i, entry in enumerate(entries):
        rgb = entry.get("rgb")
        if not entry.get("name") or not (isinstance(rgb, list) and len(rgb) == 3 and all(0 <= v <= 255 for v in rgb)):
            raise ValueError(f"{path}: colours[{i}] needs 'name' and 'rgb' as three integers 0–255, got {entry}")
        names.append(entry["name"])
        rgbs.append(rgb)
        if entry.get("recolour_target", True):
            targets.append(entry["name"])
    rgb_arr = np.array(rgbs, dtype=np.uint8)
    lab = rgb_to_lab(rgb_arr.reshape(-1, 1, 3)).reshape(-1, 3)
    return ColourTable(tuple(names), rgb_arr, lab, tuple(targets))
