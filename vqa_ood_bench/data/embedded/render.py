"""Drawing and editing 64×64 shape images in easy-VQA's style and in the broader styles.

easy-VQA draws one solid, anti-aliased shape in a CSS colour on a pale background (each channel
in [230, 255]). :func:`draw_scene` renders that style and the broader ones used by
pre-training; the ``edit_*`` functions change a released easy-VQA image in place of pixels
(background, colour, quality) so derived splits keep the original image's geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .questions import ALL_COLORS

SIZE = 64
_SS = 4  # super-sampling factor for anti-aliased edges


@dataclass
class ShapeSpec:
    shape: str
    color: str
    cx: float
    cy: float
    r: float  # half-size in pixels
    angle: float = 0.0


@dataclass
class Scene:
    shapes: list[ShapeSpec]
    background: tuple[int, int, int]
    style: str = "solid"  # solid | outline | sketch
    bg_pattern: str = "plain"  # plain | stripes | checker | gradient | dark
    post: list[str] = field(default_factory=list)  # noise | blur


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def rot(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
        ca, sa = math.cos(angle), math.sin(angle)
        return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts]

    if shape == "rectangle":
        return rot([(-r, -r * 0.75), (r, -r * 0.75), (r, r * 0.75), (-r, r * 0.75)])
    if shape == "triangle":
        return rot([(0, -r), (r * 0.95, r * 0.75), (-r * 0.95, r * 0.75)])
    if shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((rr * math.cos(a), rr * math.sin(a)))
        return rot(pts)
    if shape == "cross":
        w = r * 0.35
        return rot([(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)])
    raise ValueError(f"no polygon for shape {shape!r}")


def _background(pattern: str, base: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    img = np.empty((SIZE, SIZE, 3), dtype=np.float32)
    img[:] = base
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    if pattern == "stripes":
        period = int(rng.integers(6, 14))
        other = np.array(base, dtype=np.float32) - rng.uniform(25, 45)
        img[((xx + yy) // (period // 2)) % 2 == 0] = other
    elif pattern == "checker":
        period = int(rng.integers(6, 14))
        other = np.array(base, dtype=np.float32) - rng.uniform(25, 45)
        img[((xx // period) + (yy // period)) % 2 == 0] = other
    elif pattern == "gradient":
        ramp = (xx / (SIZE - 1))[..., None] if rng.random() < 0.5 else (yy / (SIZE - 1))[..., None]
        img = img - ramp * rng.uniform(30, 60)
    elif pattern == "dark":
        img[:] = rng.uniform(25, 60, size=3)
    elif pattern != "plain":
        raise ValueError(f"unknown background pattern {pattern!r}")
    return np.clip(img, 0, 255)


def draw_scene(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """Render a scene to a 64×64 RGB image (deterministic for a given rng state)."""
    bg = _background(scene.bg_pattern, scene.background, rng)
    canvas = Image.fromarray(bg.astype(np.uint8)).resize((SIZE * _SS, SIZE * _SS), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for sp in scene.shapes:
        fill = ALL_COLORS[sp.color]
        cx, cy, r = sp.cx * _SS, sp.cy * _SS, sp.r * _SS
        width = max(2, int(r * 0.22)) if scene.style == "outline" else 0
        if scene.style == "sketch":
            _sketch(draw, sp, fill, rng)
        elif sp.shape == "circle":
            box = [cx - r, cy - r, cx + r, cy + r]
            draw.ellipse(box, fill=None if width else fill, outline=fill if width else None, width=width or 1)
        else:
            poly = _polygon(sp.shape, cx, cy, r, sp.angle)
            if width:
                draw.line(poly + [poly[0]], fill=fill, width=width, joint="curve")
            else:
                draw.polygon(poly, fill=fill)
    img = canvas.resize((SIZE, SIZE), Image.LANCZOS)
    for op in scene.post:
        img = _post(img, op, rng)
    return img


def _sketch(draw: ImageDraw.ImageDraw, sp: ShapeSpec, fill: tuple[int, int, int], rng: np.random.Generator) -> None:
    """A hand-drawn look: the outline traced twice with jitter, thick strokes."""
    cx, cy, r = sp.cx * _SS, sp.cy * _SS, sp.r * _SS
    if sp.shape == "circle":
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 24)]
    else:
        pts = _polygon(sp.shape, cx, cy, r, sp.angle)
    for _ in range(2):
        jit = [(x + rng.normal(0, r * 0.05), y + rng.normal(0, r * 0.05)) for x, y in pts]
        draw.line(jit + [jit[0]], fill=fill, width=max(2, int(r * 0.15)))


def _post(img: Image.Image, op: str, rng: np.random.Generator) -> Image.Image:
    if op == "noise":
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(8, 20), size=(SIZE, SIZE, 3))
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if op == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.8, 1.6))))
    raise ValueError(f"unknown post-processing {op!r}")


# --- degradations (VizWiz-like) -------------------------------------------------------------

def degrade(img: Image.Image, kind: str, severe: bool, rng: np.random.Generator) -> Image.Image:
    """Blur, darken, over-expose, add noise, or crop away; ``severe`` makes the content unreadable."""
    arr = np.asarray(img, dtype=np.float32)
    if kind == "blur":
        radius = rng.uniform(9, 14) if severe else rng.uniform(1.0, 2.0)
        return img.filter(ImageFilter.GaussianBlur(radius=float(radius)))
    if kind == "dark":
        factor = rng.uniform(0.0, 0.015) if severe else rng.uniform(0.35, 0.6)
        return Image.fromarray(np.clip(arr * factor, 0, 255).astype(np.uint8))
    if kind == "bright":
        alpha = rng.uniform(0.985, 1.0) if severe else rng.uniform(0.2, 0.4)
        return Image.fromarray(np.clip(arr * (1 - alpha) + 255 * alpha, 0, 255).astype(np.uint8))
    if kind == "noise":
        if severe:  # mostly noise: the shape's colour and outline are gone
            arr = arr * 0.12 + rng.uniform(0, 255, size=arr.shape) * 0.88
        else:
            arr = arr + rng.normal(0, rng.uniform(12, 25), size=arr.shape)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    raise ValueError(f"unknown degradation {kind!r}")


# --- edits of released easy-VQA images ----------------------------------------------------------

def background_of(arr: np.ndarray) -> np.ndarray:
    """The plain background colour of an easy-VQA image (its most common pixel value)."""
    flat = arr.reshape(-1, 3)
    vals, counts = np.unique(flat, axis=0, return_counts=True)
    return vals[counts.argmax()].astype(np.float32)


def shape_alpha(arr: np.ndarray, color: str) -> np.ndarray:
    """Per-pixel coverage of the shape (0 background … 1 solid fill), from the anti-aliased blend.

    Each pixel is bg + α·(fg − bg); α is recovered by projecting onto the (fg − bg) direction.
    """
    bg = background_of(arr)
    fg = np.array(ALL_COLORS[color], dtype=np.float32)
    d = fg - bg
    alpha = ((arr.astype(np.float32) - bg) @ d) / max(float(d @ d), 1e-6)
    return np.clip(alpha, 0.0, 1.0)


def recolor(img: Image.Image, old: str, new: str) -> Image.Image:
    """Change the shape's colour from ``old`` to ``new``, keeping its edges' anti-aliasing."""
    arr = np.asarray(img, dtype=np.float32)
    alpha = shape_alpha(arr, old)[..., None]
    bg = background_of(arr)
    out = bg * (1 - alpha) + np.array(ALL_COLORS[new], dtype=np.float32) * alpha
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def replace_background(img: Image.Image, color: str, pattern: str, rng: np.random.Generator) -> Image.Image:
    """Swap the plain background for a textured one; the shape's pixels stay as they were."""
    arr = np.asarray(img, dtype=np.float32)
    alpha = shape_alpha(arr, color)[..., None]
    base = tuple(int(v) for v in rng.integers(225, 256, size=3))
    new_bg = _background(pattern, base, rng)
    fg = np.array(ALL_COLORS[color], dtype=np.float32)
    out = new_bg * (1 - alpha) + fg * alpha
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def geometric(img: Image.Image, op: str) -> Image.Image:
    """Answer-invariant geometry: flips and quarter turns keep the shape's class and colour."""
    ops = {
        "flip_lr": Image.Transpose.FLIP_LEFT_RIGHT,
        "flip_tb": Image.Transpose.FLIP_TOP_BOTTOM,
        "rot90": Image.Transpose.ROTATE_90,
        "rot270": Image.Transpose.ROTATE_270,
    }
    return img.transpose(ops[op])


# --- text (TextVQA-like) -------------------------------------------------------------------------

_FONT = None


def _font() -> ImageFont.ImageFont:
    global _FONT
    if _FONT is None:
        try:
            _FONT = ImageFont.load_default(size=18)
        except TypeError:  # Pillow without FreeType support for the default font
            _FONT = ImageFont.load_default()
    return _FONT


def draw_text(word: str, color: str, background: tuple[int, int, int], rng: np.random.Generator, *, with_shape: ShapeSpec | None = None) -> Image.Image:
    """A word written on a pale background, optionally with a shape in the lower half.

    With a shape, the text keeps to the upper part so that neither hides the other.
    """
    img = Image.new("RGB", (SIZE, SIZE), background)
    if with_shape is not None:
        img = draw_scene(Scene([with_shape], background), rng)
    draw = ImageDraw.Draw(img)
    font = _font()
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    w, h = right - left, bottom - top
    x = int(rng.integers(0, max(1, SIZE - w))) - left
    y_max = (SIZE // 2 - 4 - h) if with_shape is not None else (SIZE - h)
    y = int(rng.integers(0, max(1, y_max))) - top
    draw.text((x, y), word, fill=ALL_COLORS[color], font=font)
    return img
