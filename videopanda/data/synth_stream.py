"""An endless, in-memory stream of synthetic video-QA samples (no files): render, sample frames, ask, encode.

Item k is a pure function of (seed, k): scene `k // questions_per_clip` is rendered with the generator of
`data/synth.py`, its frames are sampled exactly as `load_video` samples a file (the reference's 1-fps policy), and one
of its questions is encoded with the model's processor. Mild noise stands in for video compression. Used to train the
bundled default model without writing or decoding hundreds of thousands of clips.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..processing import VideoPandaProcessor
from .dataset import Sample
from .synth import make_questions, render_scene, sample_scene


def reference_frame_indices(num_total: int, fps: float, num_frames: int) -> list[int]:
    """Same policy as `video.sample_indices(..., sampling="reference")`, without importing PyAV."""
    from ..video import sample_indices

    return sample_indices(num_total, fps, num_frames)


_WIDE_FPS = (6, 8, 10, 12, 15, 24, 30)
_WIDE_RENDER_SIZES = (96, 112, 128, 160)
_WIDE_ASPECTS = (1.0, 1.0, 4 / 3, 16 / 9, 3 / 4)  # width / height; square twice as likely
_WIDE_LONG_SIDES = (112, 160, 224, 256)
_WIDE_GAIN = 0.15  # photometric jitter per wide clip: brightness and contrast each scaled by 1 +- up to this
_WIDE_BLUR_P = 0.3  # chance that a wide clip is slightly blurred
_WIDE_BLUR_SIDE = (0.1, 0.25)  # weight of each neighbour in the separable 3-tap blur (1/3 would be a box filter)


def photometric_jitter(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild global colour jitter of one clip, in place where possible: frames [T, H, W, 3] float32 in 0-255.

    Brightness is scaled by 1 +- up to 15% and the contrast about the clip's mean by 1 +- up to 15%; 30% of clips
    are also blurred a little (separable [w, 1 - 2w, w] filter, edges repeated). Always draws the same four values
    from `rng`, so what follows in the stream does not depend on the outcome.
    """
    gain, contrast = rng.uniform(1 - _WIDE_GAIN, 1 + _WIDE_GAIN, size=2)
    blur, side = rng.random() < _WIDE_BLUR_P, float(rng.uniform(*_WIDE_BLUR_SIDE))
    mean = float(frames.mean())
    frames *= np.float32(gain * contrast)  # (x - mean) * contrast + mean, then * gain, as one multiply-add
    frames += np.float32(gain * mean * (1 - contrast))
    if blur:
        pad = np.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")  # [T, H + 2, W + 2, 3]
        rows = side * (pad[:, :-2] + pad[:, 2:]) + (1 - 2 * side) * pad[:, 1:-1]  # [T, H, W + 2, 3]
        frames = side * (rows[:, :, :-2] + rows[:, :, 2:]) + (1 - 2 * side) * rows[:, :, 1:-1]  # [T, H, W, 3]
    return frames


class SynthQAStream(torch.utils.data.Dataset):
    """Map-style view of an endless stream (index -> sample), so DataLoader workers and resume stay deterministic.

    Args:
        processor: the model's processor.
        seed: stream seed; use different seeds for training and held-out evaluation.
        length: nominal length (how many items the sampler may ask for).
        families: restrict to these question families (default: all, caption included).
        noise: std of Gaussian pixel noise (in 0-255 units) added to the rendered frames.
        teacher_inputs: distillation only (default off): frames -> teacher pixel values (`teachers.TeacherInputs`).
        wide: vary what version 1 of the stream kept fixed, per item: clip length (12-48 frames) and frame rate
            (hence which frames are sampled), render size, frame shape (landscape and portrait frames, resized
            from the square render with antialiasing, so the STAB sees letterboxed canvases), object size and
            travel, rotation, outline, shading, background kind and tone and the question wordings
            (`sample_scene(wide=True)`), and a mild photometric jitter per clip (brightness, contrast, sometimes a
            slight blur; `photometric_jitter`) before the noise. `synth:SEED:wide` in `videopanda train --data`.
    """

    def __init__(self, processor: VideoPandaProcessor, *, seed: int = 0, length: int = 10**8, num_frames: int = 16,
                 size: int = 128, fps: int = 8, families: tuple[str, ...] | None = None, noise: float = 3.0,
                 teacher_inputs: Callable[..., torch.Tensor] | None = None, wide: bool = False) -> None:
        self.processor, self.seed, self.length = processor, seed, length
        self.num_frames, self.size, self.fps = num_frames, size, fps
        self.families, self.noise = families, noise
        self.teacher_inputs, self.wide = teacher_inputs, wide
        self.indices = reference_frame_indices(num_frames, fps, processor.config.num_frames)

    def __len__(self) -> int:
        return self.length

    def example(self, index: int) -> tuple[np.ndarray, dict]:
        """(sampled frames [T, H, W, 3] uint8, question dict with family/question/answer) of item `index`."""
        rng = np.random.default_rng([self.seed, index])
        if not self.wide:
            scene = sample_scene(rng, num_frames=self.num_frames, size=self.size, fps=self.fps)
            indices, out_hw = self.indices, None
        else:
            num_frames, fps = int(rng.integers(12, 49)), int(rng.choice(_WIDE_FPS))
            size = int(rng.choice(_WIDE_RENDER_SIZES))
            scene = sample_scene(rng, num_frames=num_frames, size=size, fps=fps, wide=True)
            indices = reference_frame_indices(num_frames, fps, self.processor.config.num_frames)
            aspect = float(rng.choice(_WIDE_ASPECTS))  # width / height
            long_side = int(rng.choice(_WIDE_LONG_SIDES))
            out_hw = (round(long_side / aspect), long_side) if aspect >= 1 else (long_side, round(long_side * aspect))
        questions = [q for q in make_questions(scene, rng) if self.families is None or q["family"] in self.families]
        question = questions[int(rng.integers(len(questions)))]
        if not self.wide:  # version 1, unchanged
            frames = render_scene(scene)[indices].astype(np.float32)
            if self.noise:
                frames += rng.normal(0.0, self.noise, frames.shape).astype(np.float32)
            return np.clip(frames, 0, 255).astype(np.uint8), question
        frames = photometric_jitter(render_scene(scene, indices).astype(np.float32), rng)  # renders 8 frames only
        if out_hw != frames.shape[1:3]:
            resized = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2), size=out_hw,
                                                      mode="bilinear", antialias=True, align_corners=False)
            frames = resized.permute(0, 2, 3, 1).numpy()
        if self.noise:  # float32 draws: a third cheaper than normal() on these larger frames
            frames += np.float32(self.noise) * rng.standard_normal(frames.shape, dtype=np.float32)
        return np.clip(frames, 0, 255).astype(np.uint8), question

    def __getitem__(self, index: int) -> Sample:
        frames, q = self.example(index)
        pixel_values = self.processor.preprocess(frames)
        ids, labels = self.processor.encode_conversation([(q["question"], q["answer"])],
                                                         self.processor.count_tokens(pixel_values))
        teacher = self.teacher_inputs(frames) if self.teacher_inputs else None
        return Sample(torch.tensor(ids), torch.tensor(labels), pixel_values, teacher)
