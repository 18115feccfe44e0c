"""The fixed colour palette of rendered objects and the look of the stuff backgrounds.

Object colours are chosen to be far apart in CIELAB (every pair ΔE76 > 25, checked by a test), so a
colour name read back from the pixels is never ambiguous, even after JPEG compression and shading.
"""

from __future__ import annotations

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 35, 40),
    "green": (40, 160, 60),
    "blue": (35, 75, 205),
    "yellow": (240, 215, 40),
    "white": (245, 245, 240),
    "black": (25, 25, 25),
    "gray": (128, 128, 128),
    "orange": (240, 130, 25),
    "purple": (125, 50, 160),
    "brown": (120, 75, 35),
    "pink": (240, 145, 185),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# Background stuff: (COCO-Stuff class, base RGB). Muted so that the palette colours stand out.
UPPER_STUFF: dict[str, tuple[int, int, int]] = {
    "sky-other": (165, 195, 225),
    "wall-other": (205, 195, 175),
    "wall-brick": (170, 110, 90),
    "ceiling-other": (220, 215, 205),
    "tree": (80, 110, 70),
    "clouds": (215, 220, 228),
}
LOWER_STUFF: dict[str, tuple[int, int, int]] = {
    "grass": (105, 140, 80),
    "floor-wood": (165, 125, 85),
    "road": (95, 95, 100),
    "sand": (212, 192, 145),
    "pavement": (150, 148, 140),
    "carpet": (150, 90, 95),
    "table": (180, 150, 110),
}
MIRROR_FRAME_RGB = (95, 60, 30)
MIRROR_GLASS_RGB = (190, 205, 215)
