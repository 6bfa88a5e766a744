"""An endless, in-memory stream of synthetic video-QA samples (no files): render, sample frames, ask, encode.

Item k is a pure function of (seed, k): scene `k // questions_per_clip` is rendered with the generator of
`data/synth.py`, its frames are sampled exactly as `load_video` samples a file (the reference's 1-fps policy), and one
of its questions is encoded with the model's processor. Mild noise stands in for video compression. Used to train the
bundled default model without writing or decoding hundreds of thousands of clips.
"""

from __future__ import annotations

import numpy as np
import torch

from ..processing import VideoPandaProcessor
from .dataset import Sample
from .synth import make_questions, render_scene, sample_scene


def reference_frame_indices(num_total: int, fps: float, num_frames: int) -> list[int]:
    """Same policy as `video.sample_indices(..., sampling="reference")`, without importing PyAV."""
    from ..video import sample_indices

    return sample_indices(num_total, fps, num_frames)


class SynthQAStream(torch.utils.data.Dataset):
    """Map-style view of an endless stream (index -> sample), so DataLoader workers and resume stay deterministic.

    Args:
        processor: the model's processor.
        seed: stream seed; use different seeds for training and held-out evaluation.
        length: nominal length (how many items the sampler may ask for).
        families: restrict to these question families (default: all, caption included).
        noise: std of Gaussian pixel noise (in 0-255 units) added to the rendered frames.
    """

    def __init__(self, processor: VideoPandaProcessor, *, seed: int = 0, length: int = 10**8, num_frames: int = 16,
                 size: int = 128, fps: int = 8, families: tuple[str, ...] | None = None, noise: float = 3.0) -> None:
        self.processor, self.seed, self.length = processor, seed, length
        self.num_frames, self.size, self.fps = num_frames, size, fps
        self.families, self.noise = families, noise
        self.indices = reference_frame_indices(num_frames, fps, processor.config.num_frames)

    def __len__(self) -> int:
        return self.length

    def example(self, index: int) -> tuple[np.ndarray, dict]:
        """(sampled frames [T, H, W, 3] uint8, question dict with family/question/answer) of item `index`."""
        rng = np.random.default_rng([self.seed, index])
        scene = sample_scene(rng, num_frames=self.num_frames, size=self.size, fps=self.fps)
        questions = [q for q in make_questions(scene, rng) if self.families is None or q["family"] in self.families]
        question = questions[int(rng.integers(len(questions)))]
        frames = render_scene(scene)[self.indices].astype(np.float32)
        if self.noise:
            frames += rng.normal(0.0, self.noise, frames.shape).astype(np.float32)
        return np.clip(frames, 0, 255).astype(np.uint8), question

    def __getitem__(self, index: int) -> Sample:
        frames, q = self.example(index)
        pixel_values = self.processor.preprocess(frames)
        ids, labels = self.processor.encode_conversation([(q["question"], q["answer"])],
                                                         self.processor.count_tokens(pixel_values))
        return Sample(torch.tensor(ids), torch.tensor(labels), pixel_values)
