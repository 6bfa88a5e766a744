"""An independent renderer of synthetic video-QA clips, to test how the default model generalises.

It follows the issue's description of the data (one to five shapes, seven colours, straight left/right/up/down motion,
objects appearing or disappearing mid-clip, seven question families with canonical short answers) but shares no code
with ``videopanda/data/synth.py`` and deliberately differs from it in how clips look (see README.md):

- PIL polygons drawn at 4x and box-downsampled (anti-aliased edges), optional shading, no / dark / light outline;
- triangles and stars in any orientation, squares slightly tilted;
- frame sizes 160x120, 176x144, 224x224, 256x256; 24-64 frames at 8-24 fps; x264 at crf 20-28;
- object radius 4.5-13% of the short side, travel 18-60% of the frame along the motion axis;
- other background textures (clouds, hatching, dots, rings, plasma, heavy grain), brighter and more tinted;
- other RGB values per colour name, jittered per object;
- phrasings: half of them the training phrasings, half new ones (``phrasing`` = "seen" / "new" per question).

Every rendering factor is drawn from its own random stream, seeded by (seed, clip, factor). ``--set factor=value``
pins one factor for the whole set while every other draw, and every question, stays the same: a controlled variation.
``--preset synthlike`` pins all of them to values close to synth.py's (128x128, 16 frames at 8 fps, radius 7-10%,
travel 30-50%, synth's RGB, dark 1.5 px outline, upright shapes, muted noise/checker/stripes/gradient backgrounds, crf
18), so that the same scenes can be compared with and without the distribution shift.

    python bench/alt_synth/generate.py --out /tmp/alt_synth --n 60 --seed 7 --per-clip 3
    python bench/alt_synth/generate.py --out /tmp/alt_like --n 60 --seed 7 --per-clip 3 --preset synthlike
    python bench/alt_synth/generate.py --out /tmp/alt_res --n 60 --seed 7 --per-clip 3 --preset synthlike \
        --set res=256x256

Output: DIR/videos/alt_NNNNNN.mp4, DIR/test_q.json and DIR/test_a.json (MSVD-QA style, read by
``videopanda eval videoqa``; each entry has ``family``, questions also ``phrasing``), DIR/clips.json (scene and
rendering factors per clip, for slicing the results) and DIR/meta.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import Counter
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
COLOUR_NAMES = ("red", "green", "blue", "yellow", "white", "purple", "orange")
DIRECTIONS = ("left", "right", "up", "down")
FAMILIES = ("colour", "shape", "count", "direction", "order", "appearance", "caption")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
UNIT = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

# Our own RGB values: same names, different shades (each object also gets a +-12 jitter per channel in "alt").
ALT_RGB = {
    "red": (215, 35, 50),
    "green": (55, 185, 80),
    "blue": (35, 105, 225),
    "yellow": (235, 210, 55),
    "white": (232, 232, 228),
    "purple": (145, 70, 205),
    "orange": (242, 125, 30),
}
# synth.py's values, used only by the "synthlike" palette (copied as numbers, not imported).
SYNTH_RGB = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 90, 240),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "purple": (160, 60, 220),
    "orange": (250, 140, 20),
}
# Drawn radius relative to the object's nominal radius, so the four shapes cover similar areas.
SHAPE_SCALE = {"circle": 1.0, "square": 0.88, "triangle": 1.3, "star": 1.35}
SUPERSAMPLE = 4

# Rendering factors: name -> {preset value name: value}. "alt" values are distributions sampled per clip.
RESOLUTIONS = ("160x120", "176x144", "224x224", "256x256")
TIMINGS = ("24@12", "30@10", "32@8", "48@24", "64@16")  # frames@fps
ALT_BACKGROUNDS = ("clouds", "hatch", "dots", "rings", "plasma", "grain")
SYNTHLIKE_BACKGROUNDS = ("noise", "checker", "stripes", "gradient")
FACTORS = ("res", "timing", "size", "travel", "palette", "outline", "pose", "shading", "background", "noise", "crf")
PRESETS = {
    "alt": {},
    "synthlike": {
        "res": "128x128",
        "timing": "16@8",
        "size": "0.07-0.10",
        "travel": "0.30-0.50",
        "palette": "synth",
        "outline": "dark",
        "pose": "upright",
        "shading": "flat",
        "background": "synthlike",
        "noise": "low",
        "crf": "18",
    },
}

PHRASES = {  # (seen in training: synth.py's phrasings, new: ours)
    "colour": (
        ("What colour is the {shape}?", "What color is the {shape} in the video?", "What is the colour of the {shape}?",
         "Which color does the {shape} have?"),
        ("What colour is the {shape} shown in the clip?", "Tell me the colour of the {shape}.",
         "What's the color of the {shape}?", "Which colour is the {shape} painted?"),
    ),
    "shape": (
        ("What shape is the {colour} object?", "What is the shape of the {colour} object in the video?",
         "Which shape is {colour}?", "What kind of shape is the {colour} one?"),
        ("What shape does the {colour} object have?", "Name the shape of the {colour} object.",
         "The {colour} object is what shape?", "Which shape is coloured {colour} in the clip?"),
    ),
    "count": (
        ("How many objects are there?", "How many shapes appear in the video?",
         "How many objects can be seen in the video?", "Count the shapes in the video."),
        ("How many shapes are in this clip?", "What is the number of objects in the video?",
         "How many objects appear in total?", "How many shapes are shown?"),
    ),
    "direction": (
        ("Which direction does the {obj} move?", "In which direction is the {obj} moving?",
         "Where does the {obj} move: left, right, up or down?", "What direction is the {obj} travelling in?"),
        ("Which way does the {obj} go?", "Is the {obj} moving left, right, up or down?",
         "In what direction does the {obj} travel?", "Where is the {obj} heading?"),
    ),
    "order": (
        ("Which object appears first?", "Which shape is visible first in the video?",
         "What is the first object to appear?", "Which object can be seen before the others?"),
        ("Which object is shown first?", "Which shape appears earliest in the video?",
         "What appears first in the clip?", "Which object shows up first?"),
    ),
    "appearance": (
        ("Does {obj} appear?", "Is there {obj} in the video?", "Can you see {obj} in the video?",
         "Does the video contain {obj}?"),
        ("Is {obj} shown in the clip?", "Do you see {obj}?", "Is {obj} visible at any point?",
         "Does {obj} show up in the video?"),
    ),
    "caption": (
        ("Describe the video.", "What happens in the video?", "Describe what you see in this video.",
         "Give a short description of the video."),
        ("Describe this clip.", "What is going on in the video?", "Summarize the video.",
         "Briefly describe the video."),
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# Scene sampling (what happens, in clip-relative units) and rendering factors (how it looks)
# ---------------------------------------------------------------------------------------------------------------
def _rng(seed: int, k: int, stream: str) -> np.random.Generator:
    """Independent generator per (seed, clip, stream): pinning one factor leaves every other draw unchanged."""
    return np.random.default_rng([seed, k, int.from_bytes(stream.encode(), "little") % (2**63)])


def _range(text: str) -> tuple[float, float]:
    lo, hi = (float(x) for x in text.split("-"))
    return lo, hi


def sample_factors(seed: int, k: int, pinned: dict[str, str]) -> dict:
    """Rendering factors of clip k; a factor in `pinned` takes that value, the others their "alt" distribution."""
    f: dict = {}
    for name in FACTORS:
        rng, value = _rng(seed, k, "factor:" + name), pinned.get(name)
        if name == "res":
            value = value or RESOLUTIONS[int(rng.integers(len(RESOLUTIONS)))]
            w, h = (int(x) for x in value.split("x"))
            f["width"], f["height"] = w, h
        elif name == "timing":
            value = value or TIMINGS[int(rng.integers(len(TIMINGS)))]
            frames, fps = (int(x) for x in value.split("@"))
            f["frames"], f["fps"] = frames, fps
        elif name == "size":
            value = value or "0.045-0.13"
        elif name == "travel":
            value = value or "0.18-0.60"
        elif name == "palette":
            value = value or "alt"
        elif name == "outline":
            value = value or str(rng.choice(["none", "dark", "light"], p=[0.4, 0.35, 0.25]))
            f["outline_px"] = 1.5 if pinned.get(name) else round(float(rng.uniform(1.0, 2.5)), 2)
        elif name == "pose":
            value = value or "any"
        elif name == "shading":
            value = value or str(rng.choice(["flat", "shaded"]))
        elif name == "background":
            kinds = SYNTHLIKE_BACKGROUNDS if value == "synthlike" else (value,) if value else ALT_BACKGROUNDS
            kind = kinds[int(rng.integers(len(kinds)))]
            f["background_kind"] = kind
            value = value or "alt"
            f["background_params"] = _background_params(rng, kind, synthlike=value == "synthlike")
        elif name == "noise":
            value = value or "alt"
            lo_std = (2.0, 4.0) if value == "low" else (2.0, 8.0)
            f["noise_std"] = round(float(rng.uniform(*lo_std)), 2)
            f["flicker"] = 0.0 if value == "low" else round(float(rng.uniform(0, 6)), 2)  # global brightness wobble
        elif name == "crf":
            value = value or str(int(rng.integers(20, 29)))
        f[name] = value
    return f


def _background_params(rng: np.random.Generator, kind: str, synthlike: bool) -> dict:
    if synthlike:  # muted mid-dark greys with a slight tint, as synth.py (channel values within 35-115)
        base, tint, contrast, lo, hi = rng.uniform(50, 85), rng.uniform(-10, 10, 3), rng.uniform(12, 25), 35, 115
    else:  # ours: brighter range, stronger tint and contrast
        base, tint, contrast, lo, hi = rng.uniform(30, 125), rng.uniform(-25, 25, 3), rng.uniform(15, 45), 10, 165
    a = np.clip(base + tint, lo, hi)
    b = np.clip(a + contrast * rng.choice([-1, 1]), lo, hi)
    return {
        "colour_a": [round(float(x), 1) for x in a],
        "colour_b": [round(float(x), 1) for x in b],
        "angle": round(float(rng.uniform(0, math.pi)), 3),
        "period": round(float(rng.uniform(5, 22)), 2),
        "grain": round(float(rng.uniform(3, 8) if synthlike else rng.uniform(2, 16 if kind == "grain" else 7)), 2),
        "cx": round(float(rng.uniform(0, 1)), 3),
        "cy": round(float(rng.uniform(0, 1)), 3),
        "seed": int(rng.integers(2**31 - 1)),
    }


def sample_scene(seed: int, k: int) -> dict:
    """Objects, directions and timing (as fractions of the clip), independent of every rendering factor."""
    rng = _rng(seed, k, "scene")
    count = int(rng.integers(1, 6))
    pairs = [(s, c) for s in SHAPES for c in COLOUR_NAMES]
    chosen = [pairs[int(i)] for i in rng.choice(len(pairs), size=count, replace=False)]
    staggered = count >= 2 and rng.random() < 0.6
    objects = []
    for i, (shape, colour) in enumerate(chosen):
        if staggered:
            appear = 0.0 if i == 0 else float(rng.uniform(0.3, 0.5))
        else:
            appear = float(rng.uniform(0.1, 0.45)) if rng.random() < 0.2 else 0.0
        disappear = 1.0
        if rng.random() < 0.2 and appear + 0.55 < 0.95:
            disappear = float(rng.uniform(appear + 0.55, 0.97))
        objects.append({
            "shape": shape, "colour": colour, "direction": DIRECTIONS[int(rng.integers(4))],
            "appear": round(appear, 4), "disappear": round(disappear, 4),
            "size_q": float(rng.random()), "travel_q": float(rng.random()),  # quantiles within the size/travel range
            "jitter": [int(x) for x in rng.integers(-12, 13, 3)],
            "angle": float(rng.uniform(0, 360)), "tilt": float(rng.uniform(-12, 12)),
            "star_inner": float(rng.uniform(0.4, 0.5)), "shade_angle": float(rng.uniform(0, 2 * math.pi)),
        })
    return {"objects": objects, "staggered": staggered}


def _frames_visible(obj: dict, t: int) -> tuple[int, int]:
    lo = int(round(obj["appear"] * t))
    hi = t if obj["disappear"] >= 1.0 else max(lo + 1, int(round(obj["disappear"] * t)))
    return lo, hi


def place_objects(seed: int, k: int, scene: dict, f: dict) -> list[dict] | None:
    """Pixel geometry per object (radius, start, speed) with no overlaps; None if the clip cannot be laid out."""
    rng = _rng(seed, k, "place")
    w, h, t = f["width"], f["height"], f["frames"]
    short = min(w, h)
    size_lo, size_hi = _range(f["size"])
    tr_lo, tr_hi = _range(f["travel"])
    outline = 0.0 if f["outline"] == "none" else f["outline_px"]
    for _ in range(60):
        placed = []
        for obj in scene["objects"]:
            radius = short * (size_lo + obj["size_q"] * (size_hi - size_lo))
            ext = radius * SHAPE_SCALE[obj["shape"]] + outline + 1.0
            ux, uy = UNIT[obj["direction"]]
            along_dim, across_dim = (w, h) if ux else (h, w)
            travel = min(along_dim * (tr_lo + obj["travel_q"] * (tr_hi - tr_lo)), along_dim - 2 * ext - 2)
            if travel <= 0:
                return None
            ok = False
            for _ in range(40):
                along = rng.uniform(ext + 1, along_dim - ext - 1 - travel)
                across = rng.uniform(ext + 1, across_dim - ext - 1)
                if ux < 0 or uy < 0:
                    along = along_dim - along
                start = (along, across) if ux else (across, along)
                cand = {"radius": radius, "ext": ext, "travel_px": travel, "start": start}
                path = _path(obj, cand, t)
                if all(not _overlap(obj, cand, path, o, c, p, t) for o, c, p in placed):
                    placed.append((obj, cand, path))
                    ok = True
                    break
            if not ok:
                break
        else:
            return [c for _, c, _ in placed]
    return None


def _path(obj: dict, geo: dict, t: int) -> np.ndarray:
    ux, uy = UNIT[obj["direction"]]
    frac = np.arange(t) / max(t - 1, 1)
    return np.stack([geo["start"][0] + ux * geo["travel_px"] * frac, geo["start"][1] + uy * geo["travel_px"] * frac], 1)


def _overlap(a, ga, pa, b, gb, pb, t) -> bool:
    la, ha = _frames_visible(a, t)
    lb, hb = _frames_visible(b, t)
    lo, hi = max(la, lb), min(ha, hb)
    if lo >= hi:
        return False
    gap = np.linalg.norm(pa[lo:hi] - pb[lo:hi], axis=1)
    return bool(gap.min() < 1.05 * (ga["ext"] + gb["ext"]))


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(img)


def render_background(f: dict) -> np.ndarray:
    """Static background [H, W, 3] float32."""
    w, h, kind, p = f["width"], f["height"], f["background_kind"], f["background_params"]
    rng = np.random.default_rng(p["seed"])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    along = xs * math.cos(p["angle"]) + ys * math.sin(p["angle"])
    period = p["period"]
    if kind == "clouds":  # fractal value noise
        weight = sum(_smooth_noise(rng, w, h, c) * a for c, a in ((3, 0.5), (7, 0.3), (17, 0.2)))
    elif kind == "hatch":  # crossed lines
        across = -xs * math.sin(p["angle"]) + ys * math.cos(p["angle"])
        weight = ((along % period < 2) | (across % period < 2)).astype(np.float32)
    elif kind == "dots":
        cx, cy = (xs % period) - period / 2, (ys % period) - period / 2
        weight = (cx * cx + cy * cy < (period / 3.5) ** 2).astype(np.float32)
    elif kind == "rings":
        r = np.hypot(xs - p["cx"] * w, ys - p["cy"] * h)
        weight = 0.5 + 0.5 * np.sin(2 * math.pi * r / period)
    elif kind == "plasma":
        weight = (np.sin(xs / period) + np.sin(ys / (period * 1.3)) + np.sin((xs + ys) / (period * 0.7)) + 3) / 6
    elif kind == "grain":
        weight = np.zeros((h, w), np.float32)
    # synth-like kinds (our own implementation of the look described in docs/synthetic_data.md)
    elif kind == "checker":
        q = max(int(period), 2)
        weight = ((xs // q + ys // q) % 2).astype(np.float32)
    elif kind == "stripes":
        weight = 0.5 + 0.5 * np.sin(2 * math.pi * along / period)
    elif kind == "gradient":
        weight = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    elif kind == "noise":
        weight = np.kron(rng.random((h // 4 + 1, w // 4 + 1)), np.ones((4, 4)))[:h, :w].astype(np.float32)
    else:
        raise ValueError(kind)
    a, b = np.asarray(p["colour_a"], np.float32), np.asarray(p["colour_b"], np.float32)
    img = a + (b - a) * weight[..., None]
    return img + rng.normal(0, p["grain"], (h, w, 1)).astype(np.float32)


def _polygon(shape: str, r: float, obj: dict, pose: str) -> list[tuple[float, float]] | None:
    """Vertices around the origin (None for circles); y grows downwards."""
    if shape == "circle":
        return None
    if shape == "square":
        base, n, rad = 45.0 + (obj["tilt"] if pose == "any" else 0.0), 4, r * math.sqrt(2)
        return [(rad * math.cos(math.radians(base + 90 * i)), rad * math.sin(math.radians(base + 90 * i)))
                for i in range(n)]
    rot = obj["angle"] if pose == "any" else 0.0
    if shape == "triangle":
        return [(r * math.sin(math.radians(rot + 120 * i)), -r * math.cos(math.radians(rot + 120 * i)))
                for i in range(3)]
    inner = obj["star_inner"] if pose == "any" else 0.45
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * inner
        ang = math.radians(rot + 36 * i)
        pts.append((rad * math.sin(ang), -rad * math.cos(ang)))
    return pts


def _mask(shape: str, r: float, obj: dict, pose: str, cx: float, cy: float, box: int) -> np.ndarray:
    """Anti-aliased coverage [box, box] in [0, 1] of the shape centred at (cx, cy) within a box-sized patch."""
    s = SUPERSAMPLE
    img = Image.new("L", (box * s, box * s), 0)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=255)
    else:
        draw.polygon([((cx + x) * s, (cy + y) * s) for x, y in _polygon(shape, r, obj, pose)], fill=255)
    return np.asarray(img.resize((box, box), Image.Resampling.BOX), np.float32) / 255.0


def render_clip(scene: dict, geos: list[dict], f: dict, seed: int, k: int) -> np.ndarray:
    w, h, t = f["width"], f["height"], f["frames"]
    rng = _rng(seed, k, "pixels")
    bg = render_background(f)
    frames = np.repeat(bg[None], t, axis=0)
    frames += rng.normal(0, f["noise_std"], (t, h, w, 1)).astype(np.float32)
    frames += (rng.normal(0, f["flicker"], (t, 1, 1, 1)) if f["flicker"] else 0.0)
    palette = SYNTH_RGB if f["palette"] == "synth" else ALT_RGB
    outline_rgb = {"dark": (20, 20, 20), "light": (225, 225, 225)}.get(f["outline"])
    for obj, geo in zip(scene["objects"], geos):
        rgb = np.asarray(palette[obj["colour"]], np.float32)
        if f["palette"] == "alt":
            rgb = np.clip(rgb + np.asarray(obj["jitter"], np.float32), 0, 255)
        r = geo["radius"] * SHAPE_SCALE[obj["shape"]]
        box = int(math.ceil(2 * geo["ext"])) + 4
        lo, hi = _frames_visible(obj, t)
        path = _path(obj, geo, t)
        yy, xx = np.mgrid[0:box, 0:box].astype(np.float32)
        for ti in range(lo, hi):
            x, y = path[ti]
            x0, y0 = int(math.floor(x)) - box // 2, int(math.floor(y)) - box // 2
            cx, cy = x - x0, y - y0
            patch = frames[ti, max(y0, 0):y0 + box, max(x0, 0):x0 + box]
            sy, sx = max(0, -y0), max(0, -x0)
            layers = []
            if outline_rgb is not None:
                width = f["outline_px"] * (1.0 if obj["shape"] == "circle" else 1.3)
                layers.append((_mask(obj["shape"], r + width, obj, f["pose"], cx, cy, box), outline_rgb, None))
            shade = None
            if f["shading"] == "shaded":  # linear light falloff across the object, 0.82 .. 1.08
                d = ((xx - cx) * math.cos(obj["shade_angle"]) + (yy - cy) * math.sin(obj["shade_angle"])) / max(r, 1)
                shade = np.clip(0.95 + 0.13 * d, 0.82, 1.08)[..., None]
            layers.append((_mask(obj["shape"], r, obj, f["pose"], cx, cy, box), rgb, shade))
            for alpha, colour, sh in layers:
                a = alpha[sy:sy + patch.shape[0], sx:sx + patch.shape[1], None]
                c = np.asarray(colour, np.float32)
                c = c if sh is None else np.clip(c * sh[sy:sy + patch.shape[0], sx:sx + patch.shape[1]], 0, 255)
                patch[:] = patch * (1 - a) + c * a
    return np.clip(frames, 0, 255).round().astype(np.uint8)


def write_mp4(frames: np.ndarray, path: Path, fps: int, crf: str) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------------------------------------------
def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _name(o: dict) -> str:
    return f"{o['colour']} {o['shape']}"


def caption(scene: dict) -> str:
    """Same canonical template as the training captions: objects by appearance time."""
    clauses = []
    for o in sorted(scene["objects"], key=lambda o: o["appear"]):
        action = f"moves {o['direction']}"
        if o["appear"] > 0:
            action = f"appears and {action}"
        if o["disappear"] < 1.0:
            action = f"{action} then disappears"
        clauses.append(f"{_article(_name(o))} {action}")
    head = ", ".join(clauses[:-1])
    return (f"{head} and {clauses[-1]}" if head else clauses[-1]) + "."


def supported_questions(scene: dict, seed: int, k: int) -> dict[str, dict]:
    """family -> {question, answer, phrasing, about}; families whose question would be ambiguous are left out."""
    rng = _rng(seed, k, "questions")
    objs = scene["objects"]
    shapes, colours = Counter(o["shape"] for o in objs), Counter(o["colour"] for o in objs)
    out: dict[str, dict] = {}

    def phrase(family: str) -> tuple[str, str]:
        kind = int(rng.integers(2))
        options = PHRASES[family][kind]
        return options[int(rng.integers(len(options)))], ("seen", "new")[kind]

    def add(family: str, question: str, answer: str, phrasing: str, about: str | None = None) -> None:
        out[family] = {"question": question, "answer": answer, "phrasing": phrasing, "about": about}

    # Draw phrasings and picks for every family up front, so the draws do not depend on which families apply.
    picks = {fam: phrase(fam) for fam in FAMILIES}
    choice = {fam: float(rng.random()) for fam in ("colour", "shape", "direction", "appearance", "absent")}
    present = choice["appearance"] < 0.5
    hard = float(rng.random()) < 0.5

    uniq_shape = [o for o in objs if shapes[o["shape"]] == 1]
    if uniq_shape:
        o = uniq_shape[int(choice["colour"] * len(uniq_shape))]
        add("colour", picks["colour"][0].format(shape=o["shape"]), o["colour"], picks["colour"][1], _name(o))
    uniq_colour = [o for o in objs if colours[o["colour"]] == 1]
    if uniq_colour:
        o = uniq_colour[int(choice["shape"] * len(uniq_colour))]
        add("shape", picks["shape"][0].format(colour=o["colour"]), o["shape"], picks["shape"][1], _name(o))
    add("count", picks["count"][0], NUMBER_WORDS[len(objs)], picks["count"][1])
    # direction: only objects whose visible motion is clear (visible >= 60% of the clip, so >= ~11% of the frame)
    movers = [o for o in objs if o["disappear"] - o["appear"] >= 0.6]
    if movers:
        o = movers[int(choice["direction"] * len(movers))]
        add("direction", picks["direction"][0].format(obj=_name(o)), o["direction"], picks["direction"][1], _name(o))
    # order: exactly one object from the start, every other one at least 30% of the clip later
    if len(objs) >= 2:
        first = [o for o in objs if o["appear"] == 0.0]
        later = [o["appear"] for o in objs if o["appear"] > 0.0]
        if len(first) == 1 and min(later) >= 0.3:
            add("order", picks["order"][0], f"the {_name(first[0])}", picks["order"][1], _name(first[0]))
    names = {_name(o) for o in objs}
    if present:
        o = objs[int(choice["absent"] * len(objs))]
        name, answer = _name(o), "yes"
    else:
        absent = [f"{c} {s}" for s in SHAPES for c in COLOUR_NAMES if f"{c} {s}" not in names]
        near = [n for n in absent if any(o["colour"] in n.split() or o["shape"] in n.split() for o in objs)]
        pool = near if (hard and near) else absent
        name, answer = pool[int(choice["absent"] * len(pool))], "no"
    add("appearance", picks["appearance"][0].format(obj=_article(name)), answer, picks["appearance"][1], name)
    add("caption", picks["caption"][0], caption(scene), picks["caption"][1])
    return out


# ---------------------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------------------
def generate(out: Path, n: int, seed: int, per_clip: int | None, pinned: dict[str, str],
             families_wanted: tuple[str, ...] = FAMILIES) -> dict:
    started = time.perf_counter()
    (out / "videos").mkdir(parents=True, exist_ok=True)
    test_q, test_a, clips = [], [], []
    asked: Counter = Counter()
    render_s = encode_s = 0.0
    for k in range(n):
        name = f"alt_{k:06d}"
        scene = sample_scene(seed, k)
        f = sample_factors(seed, k, pinned)
        geos = place_objects(seed, k, scene, f)
        tries = 0
        while geos is None:  # too crowded for this frame: drop the last object (questions follow the final scene)
            tries += 1
            if len(scene["objects"]) == 1:
                raise RuntimeError(f"clip {k}: a single object does not fit a {f['width']}x{f['height']} frame")
            scene = {**scene, "objects": scene["objects"][:-1]}
            geos = place_objects(seed, k, scene, f)
        qs = supported_questions(scene, seed, k)
        families = [fam for fam in qs if fam in families_wanted]
        if per_clip is not None:  # balance families over the set: least asked first, ties in a seeded order
            tie = _rng(seed, k, "balance").permutation(len(families))
            families = sorted(families, key=lambda fam: (asked[fam], tie[families.index(fam)]))[:per_clip]
            families = [fam for fam in FAMILIES if fam in families]
        for j, fam in enumerate(families):
            asked[fam] += 1
            q = qs[fam]
            qid = f"{name}_{j}"
            test_q.append({"video_name": name, "question": q["question"], "question_id": qid, "family": fam,
                           "phrasing": q["phrasing"]})
            test_a.append({"answer": q["answer"], "question_id": qid, "family": fam})
        t0 = time.perf_counter()
        frames = render_clip(scene, geos, f, seed, k)
        t1 = time.perf_counter()
        write_mp4(frames, out / "videos" / f"{name}.mp4", f["fps"], f["crf"])
        render_s, encode_s = render_s + t1 - t0, encode_s + time.perf_counter() - t1
        objs = []
        for o, g in zip(scene["objects"], geos):
            lo, hi = _frames_visible(o, f["frames"])
            along_dim = f["width"] if UNIT[o["direction"]][0] else f["height"]
            objs.append({"name": _name(o), "direction": o["direction"], "appear": o["appear"],
                         "disappear": o["disappear"], "frames_visible": [lo, hi],
                         "radius_px": round(g["radius"], 2),
                         "radius_frac": round(g["radius"] / min(f["width"], f["height"]), 4),
                         "travel_px": round(g["travel_px"], 1), "travel_frac": round(g["travel_px"] / along_dim, 3),
                         "start_px": [round(float(v), 1) for v in g["start"]]})
        clips.append({"video_name": name, "objects": objs, "dropped_objects": tries, "factors": f,
                      "questions": {fam: qs[fam] for fam in families}})
    meta = {"generator": "bench/alt_synth/generate.py", "seed": seed, "n": n, "per_clip": per_clip,
            "families_wanted": list(families_wanted),
            "pinned": pinned, "questions": len(test_q), "families": dict(Counter(q["family"] for q in test_q)),
            "answers": {fam: dict(Counter(a["answer"] for a in test_a if a["family"] == fam))
                        for fam in FAMILIES if fam != "caption"},
            "seconds": round(time.perf_counter() - started, 2), "render_s": round(render_s, 2),
            "encode_s": round(encode_s, 2)}
    for fname, obj in (("test_q.json", test_q), ("test_a.json", test_a), ("clips.json", clips), ("meta.json", meta)):
        (out / fname).write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--n", type=int, default=60, help="clips")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--per-clip", type=int, default=None,
                    help="questions per clip, families balanced over the set (default: every supported family)")
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help="comma-separated families to ask (default: all seven)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="alt")
    ap.add_argument("--set", action="append", default=[], metavar="FACTOR=VALUE",
                    help=f"pin one rendering factor ({', '.join(FACTORS)}); e.g. res=128x128, timing=16@8, "
                         "size=0.07-0.10, travel=0.30-0.50, palette=synth|alt, outline=none|dark|light, "
                         "pose=upright|any, shading=flat|shaded, background=synthlike|<kind>, noise=low, crf=18; "
                         "FACTOR=alt: that factor's alt_synth distribution")
    args = ap.parse_args()
    pinned = dict(PRESETS[args.preset])
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in FACTORS or not value:
            ap.error(f"--set {item}: expected FACTOR=VALUE with FACTOR in {FACTORS}")
        if value == "alt":  # back to the alt_synth distribution (e.g. on top of --preset synthlike)
            pinned.pop(key, None)
        else:
            pinned[key] = value
    families = tuple(f for f in args.families.split(",") if f)
    if not families or set(families) - set(FAMILIES):
        ap.error(f"--families: expected a comma-separated subset of {FAMILIES}")
    meta = generate(args.out, args.n, args.seed, args.per_clip, pinned, families)
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
