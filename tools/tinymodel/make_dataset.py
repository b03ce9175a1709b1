#!/usr/bin/env python3
"""Procedural, captioned "shapes" dataset for the tiny text-to-image demo model (issue 8).

No downloads: every image is drawn with PIL from a scene description, deterministically from a seed.

Scene = a background color + one object (85%) or two objects (15%, "a red circle left of a blue square").
Object = shape (circle, square, triangle, star, diamond) x color (8 named colors) x size (small, medium,
large) x position (left, right, top, bottom, center; +-3 px jitter). Images are 64x64 RGB, drawn 4x
supersampled and box-filtered (anti-aliased edges).

Captions are plain English with some variety ("a red circle on the left", "a small blue star at the top on a
black background", "an image of a green square in the middle", "a red circle left of a blue square", ...).
Attributes the caption leaves out (size, background) are random; the position is ALWAYS stated.

Public API
    FG_COLORS, BG_COLORS, SHAPES, SIZES, POSITIONS        the vocabularies (name -> RGB / parameters)
    sample_scene(rng) -> scene dict                         a random scene
    render(scene) -> uint8 [64, 64, 3]                      draw it
    caption(scene, rng) -> str                              one random caption for it
    labels(scene) -> dict                                   ground truth (color, shape, position, ...) of the
                                                            first object, for the adherence check
    generate(n, seed) -> (images uint8 [n,64,64,3], captions list[str], scenes list[dict])

    python tools/tinymodel/make_dataset.py --n 16 --seed 0 --grid /tmp/grid.png   # preview
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from PIL import Image, ImageDraw

IMG = 64
SS = 4  # supersampling factor

# Foreground palette: well separated in RGB so "nearest named color" classification is unambiguous.
FG_COLORS = {
    "red": (220, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (245, 225, 30),
    "green": (30, 160, 50),
    "cyan": (30, 200, 220),
    "blue": (30, 60, 220),
    "purple": (150, 50, 200),
    "pink": (250, 130, 200),
}
# Backgrounds: neutral, far from every foreground color (min RGB distance >= 100).
BG_COLORS = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (120, 120, 120),
}
SHAPES = ["circle", "square", "triangle", "star", "diamond"]
SIZES = {"small": 7.0, "medium": 10.5, "large": 14.0}  # "radius" in 64x64 pixels
# Object center (x, y) as fractions of the image side.
POSITIONS = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
JITTER = 3.0  # px, uniform +-

POS_PHRASES = {
    "left": ["on the left", "on the left side", "at the left"],
    "right": ["on the right", "on the right side", "at the right"],
    "top": ["at the top", "on the top", "at the top of the image"],
    "bottom": ["at the bottom", "on the bottom", "at the bottom of the image"],
    "center": ["in the center", "in the middle", "at the center"],
}
PREFIXES = ["", "", "", "a picture of ", "an image of ", "a drawing of "]
PAIR_RELATIONS = {  # relation -> (position of object 1, position of object 2)
    "left of": ("left", "right"),
    "right of": ("right", "left"),
    "above": ("top", "bottom"),
    "below": ("bottom", "top"),
}


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def sample_object(rng: np.random.Generator, position: str, sizes=None, avoid_color=None) -> dict:
    colors = [c for c in FG_COLORS if c != avoid_color]
    sizes = sizes or list(SIZES)
    return {
        "shape": SHAPES[rng.integers(len(SHAPES))],
        "color": colors[rng.integers(len(colors))],
        "size": sizes[rng.integers(len(sizes))],
        "position": position,
        "jitter": [float(x) for x in rng.uniform(-JITTER, JITTER, size=2)],
        "rotation": float(rng.uniform(-10, 10)),  # degrees, small
    }


def sample_scene(rng: np.random.Generator, p_pair: float = 0.15) -> dict:
    bg = list(BG_COLORS)[rng.integers(len(BG_COLORS))]
    if rng.random() < p_pair:
        rel = list(PAIR_RELATIONS)[rng.integers(len(PAIR_RELATIONS))]
        p1, p2 = PAIR_RELATIONS[rel]
        o1 = sample_object(rng, p1, sizes=["small", "medium"])
        o2 = sample_object(rng, p2, sizes=["small", "medium"], avoid_color=o1["color"])
        return {"background": bg, "objects": [o1, o2], "relation": rel}
    pos = list(POSITIONS)[rng.integers(len(POSITIONS))]
    return {"background": bg, "objects": [sample_object(rng, pos)], "relation": None}


def shape_polygon(shape: str, cx: float, cy: float, r: float, rot_deg: float):
    """Polygon vertices (None for circle) in supersampled pixel coordinates."""
    if shape == "circle":
        return None
    if shape == "square":
        pts = [(math.cos(math.radians(a)) * r * 1.2, math.sin(math.radians(a)) * r * 1.2) for a in (45, 135, 225, 315)]
    elif shape == "diamond":
        pts = [(0, -r * 1.15), (r * 0.8, 0), (0, r * 1.15), (-r * 0.8, 0)]
    elif shape == "triangle":
        R = r * 1.3
        pts = [(R * math.cos(math.radians(a)), R * math.sin(math.radians(a)) + r * 0.2) for a in (-90, 30, 150)]
    elif shape == "star":
        R, ri = r * 1.3, r * 0.55
        pts = []
        for k in range(10):
            a = math.radians(-90 + 36 * k)
            rr = R if k % 2 == 0 else ri
            pts.append((rr * math.cos(a), rr * math.sin(a)))
    else:
        raise ValueError(shape)
    t = math.radians(rot_deg)
    c, s = math.cos(t), math.sin(t)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def render(scene: dict) -> np.ndarray:
    W = IMG * SS
    im = Image.new("RGB", (W, W), BG_COLORS[scene["background"]])
    d = ImageDraw.Draw(im)
    for o in scene["objects"]:
        fx, fy = POSITIONS[o["position"]]
        cx = (fx * IMG + o["jitter"][0]) * SS
        cy = (fy * IMG + o["jitter"][1]) * SS
        r = SIZES[o["size"]] * SS
        col = FG_COLORS[o["color"]]
        poly = shape_polygon(o["shape"], cx, cy, r, o["rotation"])
        if poly is None:
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
        else:
            d.polygon(poly, fill=col)
    im = im.resize((IMG, IMG), Image.BOX)
    return np.asarray(im, dtype=np.uint8)


def object_phrase(o: dict, rng: np.random.Generator, with_size: bool) -> str:
    words = ([o["size"]] if with_size else []) + [o["color"], o["shape"]]
    return f"{article(words[0])} {' '.join(words)}"


def caption(scene: dict, rng: np.random.Generator) -> str:
    prefix = PREFIXES[rng.integers(len(PREFIXES))]
    bg = scene["background"]
    bg_phrase = ""
    if rng.random() < 0.4:
        bg_phrase = [f" on a {bg} background", f" on {bg}", f", {bg} background"][rng.integers(3)]
    if scene["relation"] is not None:
        o1, o2 = scene["objects"]
        body = f"{object_phrase(o1, rng, False)} {scene['relation']} {object_phrase(o2, rng, False)}"
    else:
        o = scene["objects"][0]
        with_size = rng.random() < 0.4
        obj = object_phrase(o, rng, with_size)
        phrases = POS_PHRASES[o["position"]]
        # The first phrase of each position (the adherence-prompt form) is used half of the time.
        pos = phrases[0] if rng.random() < 0.5 else phrases[rng.integers(len(phrases))]
        body = f"{obj} {pos}"
    if prefix:
        body = prefix + body  # "an image of a red circle ..."
    return body + bg_phrase


def labels(scene: dict) -> dict:
    """Ground truth of the first (or only) object, in the adherence check's vocabulary."""
    o = scene["objects"][0]
    return {
        "color": o["color"],
        "color_rgb": list(FG_COLORS[o["color"]]),
        "shape": o["shape"],
        "size": o["size"],
        "position": o["position"],
        "background": scene["background"],
        "background_rgb": list(BG_COLORS[scene["background"]]),
        "num_objects": len(scene["objects"]),
    }


def generate(n: int, seed: int, p_pair: float = 0.15):
    rng = np.random.default_rng(seed)
    images = np.empty((n, IMG, IMG, 3), dtype=np.uint8)
    captions, scenes = [], []
    for i in range(n):
        s = sample_scene(rng, p_pair)
        images[i] = render(s)
        captions.append(caption(s, rng))
        scenes.append(s)
    return images, captions, scenes


def grid(images: np.ndarray, cols: int = 8, pad: int = 2) -> Image.Image:
    n = len(images)
    rows = (n + cols - 1) // cols
    H = images.shape[1]
    out = Image.new("RGB", (cols * (H + pad) + pad, rows * (H + pad) + pad), (255, 255, 255))
    for i, im in enumerate(images):
        out.paste(Image.fromarray(im), (pad + (i % cols) * (H + pad), pad + (i // cols) * (H + pad)))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", default=None)
    a = ap.parse_args()
    ims, caps, scenes = generate(a.n, a.seed)
    for i, c in enumerate(caps):
        print(i, c, labels(scenes[i]))
    if a.grid:
        grid(ims).resize((grid(ims).width * 2, grid(ims).height * 2), Image.NEAREST).save(a.grid)
