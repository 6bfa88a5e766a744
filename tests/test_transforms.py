"""Tests for videopanda.transforms: anypixel geometry (spec 3.2 and the token table of spec 1.5), the mask channel,
normalisation, padding and input validation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from videopanda.transforms import CLIP_MEAN, CLIP_STD, Geometry, anypixel_geometry, frames_to_pixel_values

MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)
BACKGROUND = (122, 116, 104)  # int(255 * CLIP_MEAN)


def solid_frames(num: int, width: int, height: int, colour=(200, 100, 50)) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, dtype=np.uint8), (num, height, width, 3)).copy()


def normalised(colour) -> torch.Tensor:
    """(colour / 255 - mean) / std as [3, 1, 1], computed the reference's way."""
    return (torch.tensor(colour, dtype=torch.float32).view(3, 1, 1) / 255 - MEAN) / STD


# ---------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------

# (source w, h) -> (valid w, h, top, left) at 448, then the LSD token grid h x w and tokens/frame from spec 1.5.
GEOMETRY_TABLE = [
    pytest.param((448, 448), (448, 448, 0, 0), (16, 16), 273, id="square"),
    pytest.param((100, 100), (448, 448, 0, 0), (16, 16), 273, id="small-square"),
    pytest.param((320, 240), (448, 336, 56, 0), (12, 16), 205, id="4:3-320x240"),
    pytest.param((640, 480), (448, 336, 56, 0), (12, 16), 205, id="4:3-640x480"),
    pytest.param((1280, 720), (448, 252, 84, 0), (9, 16), 154, id="16:9-1280x720"),
    pytest.param((480, 640), (336, 448, 0, 56), (16, 12), 209, id="3:4-portrait"),
]


@pytest.mark.parametrize(("source", "region", "grid", "tokens"), GEOMETRY_TABLE)
def test_geometry_matches_the_spec(source, region, grid, tokens):
    geometry = anypixel_geometry(*source)
    assert (geometry.width, geometry.height, geometry.top, geometry.left) == region
    assert geometry.canvas == 448
    # The LSD grid is half the valid 14 px patches at 448 scale, i.e. one cell per 28 px.
    rows, cols = geometry.height // 28, geometry.width // 28
    assert (rows, cols) == grid
    assert 1 + rows * (cols + 1) == tokens


def test_geometry_rounds_the_short_side_up_to_whole_patches():
    # 1920x800 (2.4:1): 224*800/1920/14 = 6.67 patches -> 7 -> 98 px at 224, 196 at 448; pre = (16-7)//2 = 4 patches.
    assert anypixel_geometry(1920, 800) == Geometry(width=448, height=196, top=112, left=0, canvas=448)
    # A 16:1 strip keeps one patch row.
    assert anypixel_geometry(1600, 100) == Geometry(width=448, height=28, top=196, left=0, canvas=448)


def test_geometry_is_symmetric_for_portrait():
    for width, height in [(320, 240), (1280, 720), (1920, 800), (333, 111)]:
        landscape = anypixel_geometry(width, height)
        portrait = anypixel_geometry(height, width)
        assert (portrait.width, portrait.height, portrait.left, portrait.top) == (
            landscape.height,
            landscape.width,
            landscape.top,
            landscape.left,
        )


@pytest.mark.parametrize(
    ("source", "kwargs", "expected"),
    [
        # 112/14 = 8 patches; 112*720/1280/14 = 4.5 -> 5 patches = 70 px -> 140 at 224; pre = (8-5)//2 = 1 patch.
        ((1280, 720), {"image_size": 224, "teacher_size": 112}, Geometry(224, 140, 28, 0, 224)),
        ((240, 320), {"image_size": 224, "teacher_size": 112}, Geometry(168, 224, 0, 28, 224)),
        ((1280, 720), {"image_size": 224, "teacher_size": 224}, Geometry(224, 126, 42, 0, 224)),  # ratio 1
    ],
)
def test_geometry_smaller_configs(source, kwargs, expected):
    assert anypixel_geometry(*source, **kwargs) == expected


def test_geometry_matches_the_reference_float_formula():
    """Our integer ceil equals the reference's math.ceil(224 * short / long / 14) over many sizes."""
    for long_side in range(15, 2000, 7):
        for short_side in range(1, long_side, max(1, long_side // 37)):
            val = math.ceil(224 * short_side / long_side / 14)
            assert anypixel_geometry(long_side, short_side).height == val * 14 * 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 448, "teacher_size": 200}, "multiple of teacher_size"),
        ({"image_size": 448, "teacher_size": 224, "patch_size": 15}, "multiple of patch_size"),
        ({"image_size": 0}, "sizes must be positive"),
    ],
)
def test_geometry_rejects_incompatible_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        anypixel_geometry(320, 240, **kwargs)


def test_geometry_rejects_empty_frames_and_is_frozen():
    with pytest.raises(ValueError, match="frame size must be positive"):
        anypixel_geometry(0, 240)
    with pytest.raises(dataclasses.FrozenInstanceError):
        anypixel_geometry(320, 240).top = 0


# ---------------------------------------------------------------------------------------------------------------
# pixel_values
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "region", "grid", "tokens"), GEOMETRY_TABLE)
def test_mask_is_binary_and_matches_the_geometry(source, region, grid, tokens):
    pixel_values = frames_to_pixel_values(solid_frames(2, *source))
    assert pixel_values.shape == (2, 4, 448, 448) and pixel_values.dtype == torch.float32
    mask = pixel_values[:, 3]
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    width, height, top, left = region
    expected = torch.zeros(448, 448)
    expected[top : top + height, left : left + width] = 1
    assert torch.equal(mask, expected.expand(2, -1, -1))


def test_background_and_content_are_normalised():
    pixel_values = frames_to_pixel_values(solid_frames(1, 320, 240, colour=(200, 100, 50)))[0]
    rgb, mask = pixel_values[:3], pixel_values[3].bool()
    background = rgb[:, ~mask]  # [3, N]
    content = rgb[:, mask]
    torch.testing.assert_close(background, normalised(BACKGROUND).view(3, 1).expand_as(background))
    # Bicubic resizing of a flat colour is the same flat colour.
    torch.testing.assert_close(content, normalised((200, 100, 50)).view(3, 1).expand_as(content))
    assert torch.allclose(background[:, 0], torch.tensor([-0.0113, -0.0112, -0.0013]), atol=1e-4)


def test_matches_a_straightforward_reference_implementation():
    """PIL bicubic resize, paste on the mean colour, /255, (x - mean) / std: the reference's steps, done naively."""
    frames = np.random.default_rng(0).integers(0, 256, (3, 90, 160, 3), dtype=np.uint8)
    geometry = anypixel_geometry(160, 90)
    expected = []
    for frame in frames:
        canvas = Image.new("RGB", (448, 448), BACKGROUND)
        canvas.paste(Image.fromarray(frame).resize((geometry.width, geometry.height), Image.BICUBIC), (0, geometry.top))
        rgb = torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float() / 255
        expected.append((rgb - MEAN) / STD)
    torch.testing.assert_close(frames_to_pixel_values(frames)[:, :3], torch.stack(expected), atol=1e-5, rtol=0)


def test_frames_already_at_canvas_size_are_not_resampled():
    frames = np.random.default_rng(1).integers(0, 256, (2, 448, 448, 3), dtype=np.uint8)
    rgb = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(frames_to_pixel_values(frames)[:, :3], (rgb - MEAN) / STD, atol=1e-5, rtol=0)


def test_padding_frames_are_all_zero():
    pixel_values = frames_to_pixel_values(solid_frames(3, 320, 240), num_frames=8)
    assert pixel_values.shape == (8, 4, 448, 448)
    assert torch.count_nonzero(pixel_values[3:]) == 0
    assert torch.all(pixel_values[:3, 3].sum(dim=(-1, -2)) == 448 * 336)


def test_no_padding_when_num_frames_matches():
    assert frames_to_pixel_values(solid_frames(8, 64, 48), num_frames=8).shape == (8, 4, 448, 448)


def test_single_image_is_one_frame():
    pixel_values = frames_to_pixel_values(solid_frames(1, 640, 480))
    assert pixel_values.shape == (1, 4, 448, 448)


def test_smaller_config():
    pixel_values = frames_to_pixel_values(
        solid_frames(2, 1280, 720), num_frames=4, image_size=224, teacher_size=112, patch_size=14
    )
    assert pixel_values.shape == (4, 4, 224, 224)
    assert pixel_values[0, 3].sum() == 224 * 140
    assert pixel_values[0, 3, 28:168].all() and not pixel_values[0, 3, :28].any()


def test_deterministic_without_flip():
    frames = np.random.default_rng(2).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    assert torch.equal(frames_to_pixel_values(frames), frames_to_pixel_values(frames))


def test_flip_mirrors_frames_and_mask_together():
    frames = np.random.default_rng(3).integers(0, 256, (2, 64, 36, 3), dtype=np.uint8)  # 9:16, padded unevenly
    plain = frames_to_pixel_values(frames, num_frames=3)
    flipped = frames_to_pixel_values(frames, num_frames=3, flip=True)
    assert torch.equal(flipped, plain.flip(-1))
    geometry = anypixel_geometry(36, 64)
    assert geometry.left + geometry.width != 448 - geometry.left  # uneven padding, so the mask flip is visible
    assert not torch.equal(flipped[:, 3], plain[:, 3])


def test_custom_mean_sets_the_background():
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    pixel_values = frames_to_pixel_values(solid_frames(1, 320, 240), mean=mean, std=std)
    torch.testing.assert_close(pixel_values[0, :3, 0, 0], torch.full((3,), (127 / 255 - 0.5) / 0.5))


@pytest.mark.parametrize(
    ("frames", "kwargs", "error", "match"),
    [
        (np.zeros((48, 64, 3), np.uint8), {}, ValueError, r"shape \[T, H, W, 3\]"),
        (np.zeros((1, 48, 64, 4), np.uint8), {}, ValueError, r"shape \[T, H, W, 3\]"),
        (np.zeros((1, 48, 64, 3), np.float32), {}, ValueError, "must be uint8"),
        (np.zeros((0, 48, 64, 3), np.uint8), {}, ValueError, "T, H and W >= 1"),
        (np.zeros((1, 0, 64, 3), np.uint8), {}, ValueError, "T, H and W >= 1"),
        (np.zeros((9, 48, 64, 3), np.uint8), {"num_frames": 8}, ValueError, "got 9 frames but num_frames=8"),
        (np.zeros((1, 48, 64, 3), np.uint8), {"num_frames": 0}, ValueError, "num_frames must be >= 1"),
        (np.zeros((1, 48, 64, 3), np.uint8), {"mean": (0.5, 0.5)}, ValueError, "need 3 values"),
        (np.zeros((1, 48, 64, 3), np.uint8), {"std": (0.5, 0.0, 0.5)}, ValueError, "std values must be positive"),
        (np.zeros((1, 48, 64, 3), np.uint8), {"teacher_size": 100}, ValueError, "multiple of"),
        (torch.zeros(1, 48, 64, 3, dtype=torch.uint8), {}, TypeError, "numpy array"),
    ],
)
def test_rejects_bad_input(frames, kwargs, error, match):
    with pytest.raises(error, match=match):
        frames_to_pixel_values(frames, **kwargs)
