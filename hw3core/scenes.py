"""Synthetic scenes with known answers: coloured shapes at known boxes on varied backgrounds.

Problem 1 uses one shape per image (its class is the colour); Problem 2 uses several and names them
in a caption. Every object comes with its box and its pixel mask, so a benchmark can check where
an attention map points.
"""
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
          "yellow": (235, 210, 40)}


@dataclass
class SceneObject:
    shape: str
    color: str
    box: tuple  # (x0, y0, x1, y1) in pixels, x1 and y1 exclusive
    mask: np.ndarray  # bool, image-sized: the pixels the shape covers


def _shape_polygon(shape, box):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if shape == "triangle":
        return [(x0 + w / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)]
    if shape == "cross":
        tw, th = w / 3, h / 3
        return [(x0 + tw, y0), (x0 + 2 * tw, y0), (x0 + 2 * tw, y0 + th), (x1 - 1, y0 + th),
                (x1 - 1, y0 + 2 * th), (x0 + 2 * tw, y0 + 2 * th), (x0 + 2 * tw, y1 - 1),
                (x0 + tw, y1 - 1), (x0 + tw, y0 + 2 * th), (x0, y0 + 2 * th), (x0, y0 + th),
                (x0 + tw, y0 + th)]
    raise ValueError(shape)


def draw_shape(mask_draw, shape, box):
    """Draw ``shape`` filling ``box`` (value 1) on a mode-'L' mask."""
    x0, y0, x1, y1 = box
    if shape == "circle":
        mask_draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=1)
    elif shape == "square":
        mask_draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=1)
    else:
        mask_draw.polygon(_shape_polygon(shape, box), fill=1)


def background(size, rng):
    """A muted random colour with a gentle gradient and pixel noise, so no two look alike.

    Muted (a grey with a light tint) so that a saturated object always stands out from it.
    """
    width, height = size
    base = rng.uniform(70, 180) + rng.normal(0, 15, size=3)
    ramp = np.linspace(-1, 1, width)[None, :, None] * rng.uniform(-30, 30, size=3)
    noise = rng.normal(0, 12, size=(height, width, 3))
    pixels = np.clip(base + ramp + noise, 0, 255)
    return pixels


def render_scene(size, objects, rng):
    """An RGB image of ``objects`` [(shape, colour, box)] drawn in order over a random background.

    Returns the image and SceneObjects whose masks hold only the pixels still visible.
    """
    width, height = size
    pixels = background(size, rng)
    placed = []
    for shape, color, box in objects:
        layer = Image.new("L", (width, height), 0)
        draw_shape(ImageDraw.Draw(layer), shape, box)
        mask = np.asarray(layer, dtype=bool)
        shade = np.array(COLORS[color]) + rng.normal(0, 10, size=3)
        pixels[mask] = np.clip(shade, 0, 255)
        for earlier in placed:
            earlier.mask &= ~mask
        placed.append(SceneObject(shape, color, tuple(int(v) for v in box), mask))
    return Image.fromarray(pixels.astype(np.uint8), "RGB"), placed


def random_box(size, rng, min_frac=0.25, max_frac=0.5, avoid=()):
    """A random square box whose side is min_frac..max_frac of the shorter image side.

    Boxes in ``avoid`` are not overlapped; after 100 tries the last candidate is returned anyway.
    """
    width, height = size
    for _ in range(100):
        side = int(rng.uniform(min_frac, max_frac) * min(width, height))
        x0 = int(rng.integers(0, width - side + 1))
        y0 = int(rng.integers(0, height - side + 1))
        box = (x0, y0, x0 + side, y0 + side)
        if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                   for b in avoid):
            break
    return box
