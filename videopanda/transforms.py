"""Frames -> ``pixel_values``: the reference's "anypixel" resize, pad, normalise and mask channel.

Reference: jh-yi/Video-Panda 995a737, which takes the logic from EVE (``compute_basehw`` / ``resize2require``) and
LanguageBind's video processor. Shape legend: T frames, H x W source size, S the square canvas (``image_size``).

A clip keeps its aspect ratio up to the patch grid: its long side fills the canvas, its short side is rounded up to
whole teacher patches, and it is pasted centred (on the patch grid) onto a canvas of the CLIP mean colour. A fourth
channel marks the pasted pixels with 1, so the model crops the letterbox away and its token count follows the
aspect ratio (16:9 -> a 9 x 16 grid, 4:3 -> 12 x 16, 3:4 -> 16 x 12).

Deliberate deviation: the reference flips every clip horizontally with p=0.5 *at inference too*, without flipping
the mask (spec 8.4), which makes its evaluation nondeterministic. We never flip unless asked (``flip=True``, for
training augmentation), and then flip the mask with the frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["CLIP_MEAN", "CLIP_STD", "Geometry", "anypixel_geometry", "frames_to_pixel_values"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Geometry:
    """Where the resized frames sit on the square canvas, in student-scale pixels.

    Attributes:
        width: Width of the valid (pasted) region.
        height: Height of the valid region.
        top: Rows of padding above it.
        left: Columns of padding left of it.
        canvas: Side of the square canvas (``image_size``).
    """

    width: int
    height: int
    top: int
    left: int
    canvas: int


def anypixel_geometry(
    width: int,
    height: int,
    *,
    image_size: int = 448,
    teacher_size: int = 224,
    patch_size: int = 14,
) -> Geometry:
    """Size and offset of a ``width`` x ``height`` frame on the square canvas (spec 3.2).

    The geometry is decided on the teacher's patch grid (``teacher_size / patch_size`` patches a side) and then
    scaled by ``image_size / teacher_size``, so that student and teacher see the same valid patches. The short side
    is rounded *up* to whole patches, hence the aspect ratio is kept only approximately.

    Args:
        width: Source frame width in pixels.
        height: Source frame height in pixels.
        image_size: Student canvas side; a multiple of ``teacher_size``.
        teacher_size: Teacher canvas side; a multiple of ``patch_size``.
        patch_size: Teacher patch size.

    Returns:
        The valid region at student scale. Square frames fill the whole canvas.
    """
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if min(image_size, teacher_size, patch_size) < 1:
        raise ValueError(f"sizes must be positive, got {image_size=}, {teacher_size=}, {patch_size=}")
    if image_size % teacher_size:
        raise ValueError(f"image_size ({image_size}) must be a multiple of teacher_size ({teacher_size})")
    if teacher_size % patch_size:
        raise ValueError(f"teacher_size ({teacher_size}) must be a multiple of patch_size ({patch_size})")
    if width == height:
        return Geometry(width=image_size, height=image_size, top=0, left=0, canvas=image_size)
    ratio = image_size // teacher_size
    grid = teacher_size // patch_size
    long_side, short_side = max(width, height), min(width, height)
    # ceil(teacher * short / long / patch) in exact integer arithmetic (the reference's float version agrees).
    short_patches = -(-teacher_size * short_side // (long_side * patch_size))
    short_px = short_patches * patch_size * ratio
    offset = (grid - short_patches) // 2 * patch_size * ratio
    if width > height:
        return Geometry(width=image_size, height=short_px, top=offset, left=0, canvas=image_size)
    return Geometry(width=short_px, height=image_size, top=0, left=offset, canvas=image_size)


def frames_to_pixel_values(
    frames: np.ndarray,
    *,
    num_frames: int | None = None,
    image_size: int = 448,
    teacher_size: int = 224,
    patch_size: int = 14,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
    flip: bool = False,
) -> torch.Tensor:
    """Resize, pad and normalise RGB frames, and add the valid-pixel mask as a 4th channel.

    The background is normalised with the rest of the canvas (as the reference does), so padding pixels are close
    to, not exactly, zero; the mask channel is what tells them apart.

    Args:
        frames: RGB frames [T, H, W, 3] uint8; T == 1 for an image.
        num_frames: Pad with all-zero frames (mask 0 too) up to this many, as the reference pads short videos.
        image_size: Canvas side S.
        teacher_size: Distillation teacher's canvas side; fixes the patch grid the geometry snaps to.
        patch_size: Teacher patch size.
        mean: Per-channel normalisation mean; ``int(255 * mean)`` is also the background colour.
        std: Per-channel normalisation std.
        flip: Mirror frames and mask left-right (training augmentation only).

    Returns:
        pixel_values [T', 4, S, S] float32, T' = ``num_frames`` or T: channels 0-2 normalised RGB, channel 3 the
        mask (1 on the pasted frame, 0 on padding and on padded frames).
    """
    _check_frames(frames, num_frames)
    mean_t, std_t = _channel_stats(mean, std)
    num_valid, height, width = frames.shape[:3]
    geometry = anypixel_geometry(width, height, image_size=image_size, teacher_size=teacher_size, patch_size=patch_size)
    canvas = _paste(frames, geometry, background=tuple(int(m * 255) for m in mean))  # [T, S, S, 3] uint8

    total = num_frames if num_frames is not None else num_valid
    pixel_values = torch.zeros(total, 4, image_size, image_size)  # [T', 4, S, S]; padded frames stay all-zero
    rgb = torch.from_numpy(canvas).permute(0, 3, 1, 2)  # [T, 3, S, S] uint8
    # (x / 255 - mean) / std as one fused op: x * (1 / (255 std)) - mean / std.
    torch.addcmul(-mean_t / std_t, rgb, 1.0 / (255.0 * std_t), out=pixel_values[:num_valid, :3])
    rows = slice(geometry.top, geometry.top + geometry.height)
    cols = slice(geometry.left, geometry.left + geometry.width)
    pixel_values[:num_valid, 3, rows, cols] = 1.0
    if flip:
        pixel_values[:num_valid] = pixel_values[:num_valid].flip(-1)
    return pixel_values


def _check_frames(frames: np.ndarray, num_frames: int | None) -> None:
    """Fail with a message that names the problem, before any resizing work."""
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"frames must be a numpy array [T, H, W, 3] uint8, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape [T, H, W, 3] (RGB), got {list(frames.shape)}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (0-255), got {frames.dtype}")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"frames must have T, H and W >= 1, got shape {list(frames.shape)}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_frames is not None and frames.shape[0] > num_frames:
        raise ValueError(f"got {frames.shape[0]} frames but num_frames={num_frames}; sample before padding")


def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and std as [3, 1, 1] float32 tensors, broadcastable over [T, 3, S, S]."""
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {len(mean)} and {len(std)}")
    if not all(math.isfinite(s) and s > 0 for s in std):
        raise ValueError(f"std values must be positive, got {tuple(std)}")
    return (
        torch.tensor(mean, dtype=torch.float32).view(3, 1, 1),
        torch.tensor(std, dtype=torch.float32).view(3, 1, 1),
    )


def _paste(frames: np.ndarray, geometry: Geometry, background: tuple[int, ...]) -> np.ndarray:
    """Resize every frame to the valid region (PIL bicubic, as the reference) and paste it onto the canvas.

    Returns:
        Canvases [T, S, S, 3] uint8.
    """
    side = geometry.canvas
    canvas = np.empty((frames.shape[0], side, side, 3), dtype=np.uint8)
    canvas[:] = np.asarray(background, dtype=np.uint8)
    region = canvas[:, geometry.top : geometry.top + geometry.height, geometry.left : geometry.left + geometry.width]
    size = (geometry.width, geometry.height)
    for frame, out in zip(frames, region):
        if frame.shape[1::-1] == size:
            out[:] = frame
        else:
            out[:] = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC))
    return canvas


# -- geometry of the visual tokens: which patches a frame keeps, and how many tokens the STAB makes of them ------
def crop_boxes(patch_mask: torch.Tensor, empty_side: int) -> torch.Tensor:
    """Bounding box of the valid patches of each frame.

    Args:
        patch_mask: [n, G, G] bool, True where a patch is valid (inside the pasted frame).
        empty_side: patch side kept for frames with no valid patch (the reference hard-codes 16).

    Returns:
        [n, 4] long (top, left, height, width) in patches. All-padding frames get (0, 0, s, s), s = min(side, G).
    """
    n, G, _ = patch_mask.shape
    rows, cols = patch_mask.any(2), patch_mask.any(1)  # [n, G]
    top, left = rows.int().argmax(1), cols.int().argmax(1)
    bottom = G - rows.flip(1).int().argmax(1)
    right = G - cols.flip(1).int().argmax(1)
    boxes = torch.stack([top, left, bottom - top, right - left], 1)
    empty = ~rows.any(1)
    side = min(empty_side, G)
    fill = torch.tensor([0, 0, side, side], device=boxes.device)
    return torch.where(empty[:, None], fill, boxes)


def patch_valid_mask(pixel_mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[n, 1, S, S] pixel mask -> [n, G, G] bool, a patch is valid when its average mask is > 0.5."""
    return F.avg_pool2d(pixel_mask.float(), patch_size, patch_size)[:, 0] > 0.5


def count_visual_tokens(pixel_values: torch.Tensor, patch_size: int, conv_stride: int,
                        empty_side: int = 16) -> list[int]:
    """Visual tokens per video, as the STAB will produce them: sum over frames of 1 + h*(w+1).

    Args:
        pixel_values: [B, T, 4, S, S] (channel 3 is the valid-pixel mask).
    """
    B, T = pixel_values.shape[:2]
    boxes = crop_boxes(patch_valid_mask(pixel_values[:, :, 3:].flatten(0, 1), patch_size), empty_side)
    h, w = boxes[:, 2] // conv_stride, boxes[:, 3] // conv_stride
    return (1 + h * (w + 1)).view(B, T).sum(1).tolist()
