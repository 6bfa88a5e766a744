"""The video half of `VideoPandaProcessor`: frames (or a video file) -> "anypixel" pixel_values and token counts.

It holds the numbers that shape the STAB's input (frames per video, canvas sizes, patch size, LSD stride), so they
are saved with the processor (`processor_config.json`) and `AutoProcessor` rebuilds them. It derives from
transformers' `VideoProcessorMixin`, not `BaseVideoProcessor`: the latter needs torchvision, which we do not install,
and its resizing is not ours. Files are decoded with our PyAV loader (`videopanda.video`), not torchcodec.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np
import torch
from transformers import BatchFeature
from transformers.video_processing_utils import VideoProcessorMixin

from .transforms import CLIP_MEAN, CLIP_STD, count_visual_tokens, frames_to_pixel_values

# [T, H, W, 3] uint8 frames, [T, 4, S, S] pixel values already processed, or the path of a local video file
Video = np.ndarray | torch.Tensor | str | os.PathLike

SIZES = ("num_frames", "image_size", "teacher_image_size", "patch_size", "conv_stride", "empty_frame_patches")


class VideoPandaVideosKwargs(TypedDict, total=False):
    """What `from_pretrained(..., **kwargs)` may override (transformers reads the keys of `valid_kwargs`)."""

    num_frames: int
    image_size: int
    teacher_image_size: int
    patch_size: int
    conv_stride: int
    empty_frame_patches: int
    image_mean: Sequence[float]
    image_std: Sequence[float]


class VideoPandaVideoProcessor(VideoProcessorMixin):
    """Video-Panda's "anypixel" preprocessing (spec 3) with the numbers of one model.

    Args:
        num_frames: frames sampled from a file, and the length short videos are padded to with empty frames.
        image_size: square canvas side S of the student input.
        teacher_image_size: canvas side at which the "anypixel" geometry is computed; divides image_size.
        patch_size: STAB patch size.
        conv_stride: LSD downsampling factor (token counting).
        empty_frame_patches: patch-grid side the STAB keeps for an all-padding frame (token counting).
        image_mean, image_std: RGB normalisation (CLIP's, as the reference).
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = VideoPandaVideosKwargs

    def __init__(self, num_frames: int = 8, image_size: int = 448, teacher_image_size: int = 224,
                 patch_size: int = 14, conv_stride: int = 2, empty_frame_patches: int = 16,
                 image_mean: Sequence[float] = CLIP_MEAN, image_std: Sequence[float] = CLIP_STD,
                 **kwargs: Any) -> None:
        kwargs.pop("video_processor_type", None)  # written by `to_dict`; the class itself says it
        super().__init__(**kwargs)
        self.num_frames = num_frames
        self.image_size = image_size
        self.teacher_image_size = teacher_image_size
        self.patch_size = patch_size
        self.conv_stride = conv_stride
        self.empty_frame_patches = empty_frame_patches
        self.image_mean = [float(m) for m in image_mean]
        self.image_std = [float(s) for s in image_std]
        for name in SIZES:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"VideoPandaVideoProcessor.{name} must be an integer >= 1, got {value!r}")

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> VideoPandaVideoProcessor:
        """The preprocessing numbers of a `VideoPandaConfig` (or anything with the same attributes)."""
        return cls(**{name: getattr(config, name) for name in SIZES}, **overrides)

    def load(self, path: str | os.PathLike, *, image: bool = False, num_frames: int | None = None) -> np.ndarray:
        """Frames [T, H, W, 3] of a local video file (sampled as the reference), or [1, H, W, 3] of an image file."""
        from .video import load_image, load_video  # PyAV is imported when a file is read, not by `import videopanda`

        text = os.fspath(path)
        if "://" in text:
            raise ValueError(f"{text}: only local files are read; download it first")
        return load_image(text) if image else load_video(text, self.num_frames if num_frames is None else num_frames)

    def preprocess_video(self, video: Video, *, image: bool = False, num_frames: int | None = None) -> torch.Tensor:
        """One video -> [T', 4, S, S]. Videos (a 1-frame video too) are padded with empty frames to `num_frames`, as
        the reference does; an image stays a single frame (the T=1 image path). Pixel values pass through."""
        if isinstance(video, (str, os.PathLike)):
            video = self.load(video, image=image, num_frames=num_frames)
        if isinstance(video, torch.Tensor) and video.ndim == 4 and video.shape[1] == 4:
            return video
        frames = np.asarray(video)
        if image and frames.ndim == 3:
            frames = frames[None]
        pad_to = None if image else self.num_frames if num_frames is None else num_frames
        return frames_to_pixel_values(frames, num_frames=pad_to, image_size=self.image_size,
                                      teacher_size=self.teacher_image_size, patch_size=self.patch_size,
                                      mean=tuple(self.image_mean), std=tuple(self.image_std))

    def count_tokens(self, pixel_values: torch.Tensor) -> int:
        """Visual tokens of one video [T, 4, S, S], exactly as the STAB will produce them."""
        return count_visual_tokens(pixel_values[None], self.patch_size, self.conv_stride, self.empty_frame_patches)[0]

    def preprocess(self, videos: Video | Sequence[Video], *, num_frames: int | None = None,
                   return_tensors: str | None = None, **kwargs: Any) -> BatchFeature:
        """Videos -> BatchFeature with pixel_values [V, T, 4, S, S] (a list when frame counts differ) and
        num_visual_tokens (one count per video)."""
        if kwargs:
            raise TypeError(f"VideoPandaVideoProcessor got unexpected arguments: {', '.join(sorted(kwargs))}")
        check_return_tensors(return_tensors)
        single = isinstance(videos, (np.ndarray, torch.Tensor, str, os.PathLike))
        pixel = [self.preprocess_video(v, num_frames=num_frames) for v in ([videos] if single else videos)]
        same = len({p.shape for p in pixel}) == 1
        return BatchFeature({"pixel_values": torch.stack(pixel) if pixel and same else pixel,
                             "num_visual_tokens": [self.count_tokens(p) for p in pixel]})


def check_return_tensors(return_tensors: str | None) -> None:
    """Our outputs are torch tensors (pixel_values may be a list of them); refuse a request for another kind."""
    if return_tensors not in (None, "pt"):
        raise ValueError(f"Video-Panda returns torch tensors; return_tensors must be 'pt' or None, "
                         f"got {return_tensors!r}")
