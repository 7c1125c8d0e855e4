"""Pictures of one coloured shape on a coloured background, drawn with Pillow.

The tiny model's VAE is calibrated on them (`models.tiny.calibration_images`), and the synthetic
collection (`synthetic.collection`) is made of them; they live here, in the models layer, so
both can use them without an upward import.
"""

from __future__ import annotations

import numpy as np

SHAPES = ["circle", "square", "triangle", "hexagon"]
_RGB = {
    "red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60), "yellow": (240, 210, 40),
    "purple": (140, 50, 190), "pink": (240, 130, 180), "orange": (245, 140, 30),
    "white": (245, 245, 245), "black": (15, 15, 15), "grey": (128, 128, 128),
}  # fmt: skip


def shape_image(rng: np.random.Generator, size: tuple[int, int]):
    """A PIL image of one coloured shape on a coloured background, and its tags."""
    from PIL import Image, ImageDraw

    bg, fg = rng.choice(list(_RGB), size=2, replace=False)
    shape = str(rng.choice(SHAPES))
    w, h = size
    img = Image.new("RGB", size, _RGB[str(bg)])
    draw = ImageDraw.Draw(img)
    r = min(w, h) * float(rng.uniform(0.25, 0.4))
    cx, cy = w * float(rng.uniform(0.35, 0.65)), h * float(rng.uniform(0.35, 0.65))
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=_RGB[str(fg)])
    elif shape == "square":
        draw.rectangle(box, fill=_RGB[str(fg)])
    else:
        sides = 3 if shape == "triangle" else 6
        draw.regular_polygon((cx, cy, r), sides, fill=_RGB[str(fg)])
    return img, [f"{bg}_background", f"{fg}_theme", shape]
