"""Tests for the synthetic video-QA generator: determinism, answers that match the pixels, and the file layout."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from videopanda.data.synth import (
    COLOURS,
    DIRECTIONS,
    FAMILIES,
    SHAPES,
    Scene,
    SceneObject,
    generate,
    make_questions,
    render_scene,
    sample_scene,
    write_video,
)

JSON_FILES = ("train.json", "val.json", "test_q.json", "test_a.json", "meta.json")
TINY = {"num_frames": 8, "size": 64, "progress": False}


def _scenes(count: int, seed: int = 0, **kwargs) -> list[tuple[Scene, list[dict[str, str]]]]:
    """Scenes and questions drawn the way generate draws them (one generator per clip)."""
    out = []
    for k in range(count):
        rng = np.random.default_rng([seed, k])
        scene = sample_scene(rng, **kwargs)
        out.append((scene, make_questions(scene, rng)))
    return out


def _object(scene: Scene, name: str) -> SceneObject:
    return next(o for o in scene.objects if o.name == name)


def _colour_mask(frames: np.ndarray, colour: str) -> np.ndarray:
    """Pixels that hold exactly the object colour (renders are exact before encoding): [T, H, W] bool."""
    return np.all(frames == np.asarray(COLOURS[colour], np.uint8), axis=-1)


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, 60, seed=3, **TINY)
    return out


def _load(out: Path, name: str) -> list[dict]:
    return json.loads((out / name).read_text())


def _all_items(out: Path) -> list[dict[str, str]]:
    """(family, question, answer, video) over every split."""
    items = [
        {"family": it["family"], "answer": it["conversations"][1]["value"], "video": Path(it["video"]).stem}
        for name in ("train.json", "val.json")
        for it in _load(out, name)
    ]
    answers = _load(out, "test_a.json")
    items += [
        {"family": q["family"], "answer": a["answer"], "video": q["video_name"]}
        for q, a in zip(_load(out, "test_q.json"), answers)
    ]
    return items


# ---------------------------------------------------------------------------------------------------------------
# Determinism and layout
# ---------------------------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_json_whatever_the_workers(dataset: Path, tmp_path: Path) -> None:
    generate(tmp_path, 60, seed=3, workers=2, **TINY)
    for name in JSON_FILES:
        assert (tmp_path / name).read_bytes() == (dataset / name).read_bytes(), name


def test_different_seed_gives_different_json(dataset: Path, tmp_path: Path) -> None:
    generate(tmp_path, 60, seed=4, **TINY)
    assert (tmp_path / "train.json").read_bytes() != (dataset / "train.json").read_bytes()


def test_layout_and_formats(dataset: Path) -> None:
    train = _load(dataset, "train.json")
    item = train[0]
    assert set(item) == {"id", "video", "family", "conversations"}
    assert item["conversations"][0]["from"] == "human" and item["conversations"][0]["value"].startswith("<video>\n")
    assert item["conversations"][1]["from"] == "gpt"
    assert all((dataset / it["video"]).is_file() for it in train)
    test_q, test_a = _load(dataset, "test_q.json"), _load(dataset, "test_a.json")
    assert len(test_q) == len(test_a) > 0
    assert [q["question_id"] for q in test_q] == [a["question_id"] for a in test_a]
    assert set(test_q[0]) == {"video_name", "question", "question_id", "family"}
    assert all((dataset / "videos" / f"{q['video_name']}.mp4").is_file() for q in test_q)
    meta = _load(dataset, "meta.json")
    assert meta["seed"] == 3 and meta["n"] == 60 and sum(meta["clips"].values()) == 60
    assert meta["questions"]["train"] == len(train)


def test_splits_are_disjoint_by_clip_and_cover_all(dataset: Path) -> None:
    clips = {
        "train": {Path(it["video"]).stem for it in _load(dataset, "train.json")},
        "val": {Path(it["video"]).stem for it in _load(dataset, "val.json")},
        "test": {q["video_name"] for q in _load(dataset, "test_q.json")},
    }
    assert not clips["train"] & clips["val"] and not clips["train"] & clips["test"] and not clips["val"] & clips["test"]
    assert len(clips["train"] | clips["val"] | clips["test"]) == 60
    assert len(clips["val"]) == len(clips["test"]) == 3


def test_families_present_and_balanced(dataset: Path) -> None:
    families = Counter(it["family"] for it in _all_items(dataset))
    assert set(families) == set(FAMILIES)
    assert min(families.values()) >= 0.5 * max(families.values()), families


def test_resume_reuses_existing_videos(tmp_path: Path) -> None:
    first = generate(tmp_path, 4, seed=1, **TINY)
    video = tmp_path / "videos" / "synth_000002.mp4"
    stamp = video.stat().st_mtime_ns
    second = generate(tmp_path, 4, seed=1, **TINY)
    assert (first["rendered"], second["rendered"], second["reused"]) == (4, 0, 4)
    assert video.stat().st_mtime_ns == stamp
    video.write_bytes(b"truncated")  # a broken file is rendered again
    assert generate(tmp_path, 4, seed=1, **TINY)["rendered"] == 1
    assert generate(tmp_path, 4, seed=2, **TINY)["rendered"] == 4  # another seed never reuses


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"n": 0}, "n"),
        ({"size": 100}, "size"),
        ({"size": 16}, "size"),
        ({"num_frames": 1}, "num_frames"),
        ({"workers": 0}, "workers"),
        ({"seed": -1}, "seed"),
        ({"splits": (0.5, 0.5, 0.5)}, "splits"),
    ],
)
def test_invalid_arguments_raise(tmp_path: Path, kwargs: dict, argument: str) -> None:
    args = {"n": 2, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=rf"^{argument} must"):
        generate(tmp_path, **args)
    assert not (tmp_path / "train.json").exists()


def test_scene_rejects_ambiguous_objects() -> None:
    obj = SceneObject("circle", "red", (0.5, 0.5), "left", 0.01, 0.08)
    with pytest.raises(ValueError, match="distinct"):
        Scene((obj, obj), "noise", {}, 8, 64)
    with pytest.raises(ValueError, match="colour"):
        SceneObject("circle", "pink", (0.5, 0.5), "left", 0.01, 0.08)


# ---------------------------------------------------------------------------------------------------------------
# Scenes and answers agree with the pixels
# ---------------------------------------------------------------------------------------------------------------


def test_scene_rules_hold() -> None:
    for scene, _ in _scenes(200):
        t, names = scene.num_frames, [o.name for o in scene.objects]
        assert 1 <= len(names) <= 5 and len(set(names)) == len(names)
        for obj in scene.objects:
            centres = obj.centres(t)
            assert np.all(centres - obj.extent(scene.size) >= 0) and np.all(centres + obj.extent(scene.size) <= 1)
            assert obj.speed * (t - 1) >= 0.3 - 1e-9  # clearly visible motion
            assert obj.end_frame(t) - obj.appear_frame >= t // 2


def test_render_is_deterministic_and_objects_have_their_colour() -> None:
    for scene, _ in _scenes(20):
        frames = render_scene(scene)
        assert frames.shape == (scene.num_frames, scene.size, scene.size, 3) and frames.dtype == np.uint8
        assert np.array_equal(frames, render_scene(scene))
        for obj in scene.objects:
            for t in range(scene.num_frames):
                x, y = (obj.centres(scene.num_frames)[t] * scene.size).astype(int)
                drawn = np.array_equal(frames[t, y, x], COLOURS[obj.colour])
                assert drawn == (obj.appear_frame <= t < obj.end_frame(scene.num_frames)), (obj, t)


def test_direction_answers_match_rendered_motion() -> None:
    checked = 0
    for scene, questions in _scenes(60):
        frames = render_scene(scene)
        for q in questions:
            if q["family"] != "direction":
                continue
            obj = next(o for o in scene.objects if o.name in q["question"])
            if sum(o.colour == obj.colour for o in scene.objects) > 1:
                continue  # colour masking needs a colour of its own
            mask = _colour_mask(frames, obj.colour)
            visible = np.flatnonzero(mask.any(axis=(1, 2)))
            assert visible[0] == obj.appear_frame and visible[-1] == obj.end_frame(scene.num_frames) - 1
            dx, dy = _centroid(mask[visible[-1]]) - _centroid(mask[visible[0]])
            observed = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
            assert observed == q["answer"]
            assert max(abs(dx), abs(dy)) >= 0.1 * scene.size
            checked += 1
    assert checked >= 30


def test_other_answers_match_the_scene() -> None:
    for scene, questions in _scenes(100):
        frames, t = render_scene(scene), scene.num_frames
        by_family = {q["family"]: q for q in questions}
        assert by_family["count"]["answer"] == ("one", "two", "three", "four", "five")[len(scene.objects) - 1]
        if "colour" in by_family:
            shape = next(s for s in SHAPES if s in by_family["colour"]["question"])
            (obj,) = [o for o in scene.objects if o.shape == shape]
            assert by_family["colour"]["answer"] == obj.colour
        if "shape" in by_family:
            colour = next(c for c in COLOURS if re.search(rf"\b{c}\b", by_family["shape"]["question"]))
            (obj,) = [o for o in scene.objects if o.colour == colour]
            assert by_family["shape"]["answer"] == obj.shape
        if "order" in by_family:
            first = _object(scene, by_family["order"]["answer"].removeprefix("the "))
            early = frames[: math.ceil(t / 4)]
            assert _colour_mask(early[:1], first.colour).any()
            for other in scene.objects:
                if other is not first and other.colour != first.colour:
                    assert not _colour_mask(early, other.colour).any()
        appearance = by_family["appearance"]
        named = next(f"{c} {s}" for c in COLOURS for s in SHAPES if f" {c} {s}" in appearance["question"])
        assert appearance["answer"] == ("yes" if named in {o.name for o in scene.objects} else "no")
        for obj in scene.objects:
            assert obj.name in by_family["caption"]["answer"] and obj.direction in by_family["caption"]["answer"]


def test_appearance_is_balanced_and_optional_families_are_safe() -> None:
    scenes = _scenes(400, seed=7)
    answers = Counter(q["answer"] for _, qs in scenes for q in qs if q["family"] == "appearance")
    assert 0.4 <= answers["yes"] / sum(answers.values()) <= 0.6, answers
    families = Counter(q["family"] for _, qs in scenes for q in qs)
    assert families["order"] >= 0.4 * len(scenes), families
    for scene, qs in scenes:
        assert all(q["answer"] == q["answer"].lower() and q["answer"] for q in qs)
        assert [q["family"] for q in qs] == [f for f in FAMILIES if f in {q["family"] for q in qs}]
    directions = Counter(o.direction for s, _ in scenes for o in s.objects)
    assert set(directions) == set(DIRECTIONS)


# ---------------------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------------------


def test_written_video_decodes_and_keeps_colours(tmp_path: Path) -> None:
    scene = sample_scene(np.random.default_rng([0, 5]), num_frames=8, size=64)
    frames = render_scene(scene)
    path = tmp_path / "clip.mp4"
    write_video(frames, path, fps=scene.fps)
    with av.open(str(path)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == frames.shape
    for obj in scene.objects:
        mask = _colour_mask(frames, obj.colour)
        # Erode by one pixel: yuv420p halves the chroma resolution, so the edges bleed into the outline.
        inner = mask & np.roll(mask, 1, 1) & np.roll(mask, -1, 1) & np.roll(mask, 1, 2) & np.roll(mask, -1, 2)
        mean = decoded[inner].mean(axis=0)
        assert np.abs(mean - COLOURS[obj.colour]).max() < 20, (obj.colour, mean)


def test_write_video_rejects_bad_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_video(np.zeros((2, 32, 32, 3), np.float32), tmp_path / "x.mp4", fps=8)
    with pytest.raises(ValueError, match="even"):
        write_video(np.zeros((2, 33, 32, 3), np.uint8), tmp_path / "x.mp4", fps=8)


def test_wide_scenes_keep_the_rules_and_vary_what_version_1_fixed() -> None:
    scenes = _scenes(200, seed=3, wide=True)
    sizes, travels, outlines = [], [], Counter()
    for scene, questions in scenes:
        t = scene.num_frames
        outlines[scene.outline] += 1
        for obj in scene.objects:
            centres = obj.centres(t)
            assert np.all(centres - obj.extent(scene.size) >= 0) and np.all(centres + obj.extent(scene.size) <= 1)
            travels.append(obj.speed * (t - 1))
            sizes.append(obj.size)
        assert questions
    assert min(travels) >= 0.15 - 1e-9 and max(travels) > 0.5 and min(sizes) < 0.06 and max(sizes) > 0.13
    assert set(outlines) == {"dark", "light", "none"}
    rotations = [o.rotation for s, _ in scenes for o in s.objects]
    assert max(abs(r) for r in rotations) > 2.5 and all(
        abs(o.rotation) <= math.radians(15) + 1e-9 for s, _ in scenes for o in s.objects if o.shape == "square")
    for scene, _ in scenes[:20]:  # rotated shapes are drawn around their centre, in their own colour
        frames = render_scene(scene)
        for obj in scene.objects:
            x, y = (obj.centres(scene.num_frames)[obj.appear_frame] * scene.size).astype(int)
            assert np.array_equal(frames[obj.appear_frame, y, x], COLOURS[obj.colour])
    # the narrow default is version 1: same scenes as before the wide option existed
    assert all(s.outline == "dark" for s, _ in _scenes(20))


def test_wide_direction_answers_match_rendered_motion() -> None:
    checked = 0
    for scene, questions in _scenes(60, seed=5, wide=True, size=96):
        frames = render_scene(scene)
        for q in (q for q in questions if q["family"] == "direction"):
            obj = next(o for o in scene.objects if o.name in q["question"])
            if sum(o.colour == obj.colour for o in scene.objects) > 1:
                continue
            mask = _colour_mask(frames, obj.colour)
            visible = np.flatnonzero(mask.any(axis=(1, 2)))
            dx, dy = _centroid(mask[visible[-1]]) - _centroid(mask[visible[0]])
            observed = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
            assert observed == q["answer"]
            checked += 1
    assert checked >= 20


def test_wide_stream_varies_frame_shape_and_is_deterministic() -> None:
    from videopanda.configuration import VARIANTS, VideoPandaConfig
    from videopanda.data.synth_stream import SynthQAStream

    class Processor:  # `example` needs only the frame count of the model
        config = VideoPandaConfig(text_config={"model_type": "llama"}, **VARIANTS["videopanda-tiny"])

    wide = SynthQAStream(Processor(), seed=1, wide=True)
    shapes = {wide.example(i)[0].shape for i in range(30)}
    assert {s[0] for s in shapes} == {8} and len(shapes) >= 5
    assert any(h < w for _, h, w, _ in shapes) and any(h > w for _, h, w, _ in shapes)
    frames, question = wide.example(7)
    again, same = wide.example(7)
    assert np.array_equal(frames, again) and question == same
    narrow = SynthQAStream(Processor(), seed=1)
    assert {narrow.example(i)[0].shape for i in range(5)} == {(8, 128, 128, 3)}
