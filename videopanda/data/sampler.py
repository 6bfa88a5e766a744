"""Length-grouped batches (`videopanda train --group-by-length`; spec 5.3), a pure function of (seed, step).

The reference (`LengthGroupedSampler` with `group_by_modality_length`) cuts a random permutation into megabatches of
world_size x batch samples, sorts each by length and deals it out evenly to the ranks. Here, in three layers, so that
resume stays exact and N processes see the same global batches as one:

1. The sample stream is the ungrouped one: one seeded permutation per epoch (`torch.randperm`, seed + epoch).
2. Each epoch is cut into megabatches of `group_size` global micro-batches (group_size x batch x world samples; the
   last one of an epoch may be shorter) and each megabatch is sorted longest first (ties by index). Epochs never mix,
   so every index appears once per epoch. This stream depends on the seed, the lengths and the global micro-batch
   size, not on how that micro-batch is split over processes.
3. Each global micro-batch (batch x world consecutive samples of that stream) is dealt out to the ranks: the next
   longest sample goes to the rank with the fewest tokens so far that still has room (the reference's
   `split_to_even_chunks`), so the ranks carry similar loads.

`group_size=1` is the reference: a megabatch is one global micro-batch, so grouping balances the ranks but does not
reduce padding. Larger values also put samples of similar length into the same micro-batch (less padding), at the
price of a less random order of lengths over a megabatch.

Lengths are estimates read from the JSON alone (no video decoding): words of the conversation plus the visual token
count of a full square canvas (`visual_tokens`); "anypixel" crops of non-square videos give fewer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def visual_tokens(config: Any, frames: int) -> int:
    """Visual tokens of `frames` square frames: each gives 1 + h*(w+1), h = w = canvas / patch / conv stride."""
    side = config.image_size // config.patch_size // config.conv_stride
    return frames * (1 + side * (side + 1))


def estimate_lengths(items: list[dict[str, Any]], config: Any) -> np.ndarray:
    """Estimated token length of each LLaVA-format item: words of every turn + visual tokens of its video/image."""
    video, image = visual_tokens(config, config.num_frames), visual_tokens(config, 1)
    out = np.empty(len(items), dtype=np.int64)
    for i, item in enumerate(items):
        words = sum(len(str(turn.get("value", "")).split()) for turn in item["conversations"])
        out[i] = words + (video if "video" in item else image if "image" in item else 0)
    return out


def split_to_even_chunks(batch: list[Any], lengths: list[int], n_chunks: int) -> list[list[Any]]:
    """Deal `batch` (sorted longest first) into `n_chunks` equal-sized chunks with balanced length sums."""
    if len(batch) % n_chunks:
        return [batch[i::n_chunks] for i in range(n_chunks)]
    size = len(batch) // n_chunks
    chunks: list[list[Any]] = [[] for _ in range(n_chunks)]
    load = [0.0] * n_chunks
    for item, length in zip(batch, lengths):
        target = load.index(min(load))
        chunks[target].append(item)
        load[target] += length
        if len(chunks[target]) == size:
            load[target] = float("inf")
    return chunks


class LengthGroupedOrder:
    """The world-independent grouped stream of layers 1 and 2: `slice(start, count)` gives its positions."""

    def __init__(self, lengths: np.ndarray, seed: int, megabatch: int) -> None:
        if len(lengths) == 0:
            raise ValueError("cannot group an empty data set by length")
        self.lengths, self.seed, self.megabatch = np.asarray(lengths), seed, megabatch
        self._cache: dict[int, np.ndarray] = {}

    def epoch(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            n = len(self.lengths)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch)).numpy()
            window = np.arange(n) // self.megabatch
            # sort by megabatch, then longest first, then index (np.lexsort: the last key is the primary one)
            order = np.lexsort((perm, -self.lengths[perm], window))
            self._cache = {epoch: perm[order]}  # a sampler walks forward: one epoch cached is enough
        return self._cache[epoch]

    def slice(self, start: int, count: int) -> list[int]:
        n, out = len(self.lengths), []
        while len(out) < count:
            epoch, offset = divmod(start + len(out), n)
            out += self.epoch(epoch)[offset: offset + count - len(out)].tolist()
        return out


class LengthGroupedStepBatches(torch.utils.data.Sampler):
    """Micro-batches of this rank for optimizer steps [start, stop), length-grouped (see the module docstring).

    Same contract as the recipe's `StepBatches`: the micro-batches of all ranks of a step are that step's global
    batch whatever the process count, a sampler started at `start` yields the tail of one started at 0, and with
    `positions=True` the items are (index, place in the global sample stream) pairs, for position-keyed flips.
    """

    def __init__(self, lengths: np.ndarray, *, batch_size: int, grad_accum: int, seed: int, group_size: int,
                 rank: int, world: int, start: int, stop: int, positions: bool = False) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size, self.grad_accum, self.rank, self.world = batch_size, grad_accum, rank, world
        self.start, self.stop, self.positions = start, stop, positions
        self.order = LengthGroupedOrder(self.lengths, seed, group_size * batch_size * world)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.grad_accum

    def __iter__(self):
        micro = self.batch_size * self.world
        per_step = micro * self.grad_accum
        for step in range(self.start, self.stop):
            first = step * per_step
            idx = self.order.slice(first, per_step)
            for m in range(self.grad_accum):
                pairs = [(idx[j], first + j) for j in range(m * micro, (m + 1) * micro)]
                mine = split_to_even_chunks(pairs, [int(self.lengths[i]) for i, _ in pairs], self.world)[self.rank]
                yield mine if self.positions else [i for i, _ in mine]
