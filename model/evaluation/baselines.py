"""Built-in baseline editors, evaluated like any model: ``smartedit evaluate --model identity``.

* ``identity`` returns the input unchanged: perfect background fidelity (PSNR capped, SSIM 1, LPIPS 0) and no
  instruction following at all. The gate must refuse it against any trained candidate, and a first candidate is
  promoted only if it beats it on instruction following.
* ``random-recolour`` rotates the hue of the whole image by an angle drawn from the call's generator: it changes
  the edit region (so it passes a mere "something changed" check) but follows no instruction and damages the
  background.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

BASELINE_PREFIX = "baseline:"


def identity(image: Image.Image, instruction: str, *, generator: torch.Generator | None = None) -> Image.Image:
    """The input, unchanged."""
    return image.convert("RGB").copy()


def random_recolour(image: Image.Image, instruction: str, *, generator: torch.Generator | None = None) -> Image.Image:
    """The whole image with its hue rotated by 32–224 of 256 steps, drawn from ``generator``."""
    import numpy as np
    import torch
    from PIL import Image as PILImage

    shift = int(torch.randint(32, 225, (1,), generator=generator))
    hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.uint8).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256
    return PILImage.fromarray(hsv, "HSV").convert("RGB")


random_recolour.__name__ = "random-recolour"

BASELINES = {"identity": identity, "random-recolour": random_recolour}


def baseline_name(model: str) -> str | None:
    """``identity`` / ``baseline:identity`` → ``identity``; anything else → None."""
    name = model.removeprefix(BASELINE_PREFIX)
    return name if name in BASELINES else None
