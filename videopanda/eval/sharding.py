"""Sharded inference under torchrun: every process answers its share of the questions, rank 0 merges.

    torchrun --nproc_per_node 8 -m videopanda eval videoqa ...     # or: python -m videopanda eval videoqa ... (1)

Each rank takes a contiguous (default) or strided shard of the question list and writes its own resumable JSONL,
`{stem}.rank{r}-of-{w}{suffix}` beside the output file (e.g. `predictions.rank3-of-8.jsonl`). After a barrier,
rank 0 merges the shards into the output file **in the original question order**, matching each line to its
question by id and checking that the line's question and answer are that question's. The reference instead
concatenates `{chunks}_{idx}.json` files, and a known failure of such scripts (Video-LLaVA #36) is answers paired
with the wrong questions when the shards are cut differently from the answer file; here a misaligned line is an
error, not a silent mismatch. One process (no torchrun) writes the output file directly, as `run_videoqa`.

Resuming works across world sizes: before answering, a rank copies the lines of its questions that an earlier run
left in the merged output file or in shards of another world size into its own shard (shards of the current world
size belong to running peers and are resumed by their owners). Generation is greedy and a batch gives the same
answers as one by one, so N processes produce the same file as one.

Process groups use NCCL on GPUs and gloo on CPU; with GPUs, rank r uses cuda:LOCAL_RANK.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .videoqa import QAItem, _write_in_order, read_jsonl, run_videoqa

__all__ = [
    "close",
    "merge_shards",
    "rank_device",
    "run_sharded",
    "shard",
    "shard_path",
    "sharded_videoqa",
    "world",
]

from ..distributed import init_distributed

logger = logging.getLogger(__name__)

STRATEGIES = ("contiguous", "strided")


def world() -> tuple[int, int]:
    """(rank, world size) of this process under torchrun (1 process otherwise)."""
    return init_distributed()


def close() -> None:
    """Leave the process group (after the last sharded run), so that ranks can finish independently."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: str = "auto") -> str:
    """`device`, with "auto" (and a bare "cuda") meaning this rank's GPU under torchrun."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return device


def shard(items: Sequence[Any], rank: int, world_size: int, strategy: str = "contiguous") -> list[Any]:
    """This rank's items.

    "contiguous": slices of ceil(N / world) items, as the reference's chunks (keeps a video's questions, which sit
    together in the question files, on one rank, so each video is decoded once); "strided": items rank, rank + w, ...
    (balances sets sorted by length or difficulty).

    Raises:
        ValueError: rank not in [0, world_size) or unknown strategy.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if strategy == "strided":
        return list(items[rank::world_size])
    if strategy != "contiguous":
        raise ValueError(f"unknown shard strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    size = -(-len(items) // world_size)
    return list(items[rank * size : (rank + 1) * size])


def shard_path(out_path: str | os.PathLike, rank: int, world_size: int) -> Path:
    """`pred.jsonl` -> `pred.rank{rank}-of-{world_size}.jsonl`, beside it."""
    out = Path(out_path)
    return out.with_name(f"{out.stem}.rank{rank}-of-{world_size}{out.suffix}")


def _shard_files(out_path: Path) -> dict[Path, int]:
    """Existing shard files of `out_path`, with the world size each belongs to."""
    pattern = re.compile(re.escape(out_path.stem) + r"\.rank(\d+)-of-(\d+)" + re.escape(out_path.suffix) + "$")
    found = {}
    for path in out_path.parent.glob(f"{out_path.stem}.rank*-of-*{out_path.suffix}"):
        match = pattern.match(path.name)
        if match:
            found[path] = int(match.group(2))
    return dict(sorted(found.items()))


def _check_aligned(record: dict[str, Any], item: QAItem, source: Path) -> None:
    if str(record.get("question")) != item.question or str(record.get("answer")) != item.answer:
        raise ValueError(
            f"{source}: the line for question {item.question_id!r} holds question {record.get('question')!r} / "
            f"answer {record.get('answer')!r}, not {item.question!r} / {item.answer!r}; the files are misaligned "
            "(written for another question set?)"
        )


def _seed(target: Path, items: Sequence[QAItem], mine: Sequence[QAItem], sources: Sequence[Path]) -> int:
    """Append to `target` the lines for `mine` that `sources` hold and `target` lacks; returns how many.

    Raises:
        ValueError: a source answers a question that is not in `items` (the output of another run), or is
            misaligned.
    """
    known = {item.question_id for item in items}
    have = {r["id"] for r in read_jsonl(target, repair=True)} if target.exists() else set()
    wanted = {item.question_id: item for item in mine if item.question_id not in have}
    found: dict[str | int, dict[str, Any]] = {}
    for source in sources:
        for record in read_jsonl(source):
            if record["id"] not in known:
                raise ValueError(f"{source} holds an answer to question {record['id']!r}, which is not in this "
                                 "question set; is it the output of another run? Use another output path or delete it")
            item = wanted.get(record["id"])
            if item is not None and record["id"] not in found:
                _check_aligned(record, item, source)
                found[record["id"]] = record
    if found:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in found.values())
    return len(found)


def merge_shards(items: Sequence[QAItem], shard_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> int:
    """Write the shards' lines to `out_path` in the order of `items`; returns how many questions have no line.

    Raises:
        ValueError: a line answers a question that is not in `items`, carries another question's text or answer,
            or one question has two different answers.
    """
    by_id = {item.question_id: item for item in items}
    merged: dict[str | int, dict[str, Any]] = {}
    for path in map(Path, shard_paths):
        for record in read_jsonl(path):
            item = by_id.get(record["id"])
            if item is None:
                raise ValueError(f"{path} answers question {record['id']!r}, which is not in this question set")
            _check_aligned(record, item, path)
            previous = merged.setdefault(record["id"], record)
            if previous.get("pred") != record.get("pred"):
                raise ValueError(f"question {record['id']!r} has two different answers in the shards ({path})")
    _write_in_order(Path(out_path), [merged[i.question_id] for i in items if i.question_id in merged])
    return sum(item.question_id not in merged for item in items)


def _combine(summaries: list[dict[str, Any]], total: int, out_path: Path) -> dict[str, Any]:
    seconds = max(s["seconds"] for s in summaries)
    done = sum(s["done"] for s in summaries)
    return {
        "total": total,
        "done": done,
        "skipped_existing": sum(s["skipped_existing"] for s in summaries),
        "num_failed": sum(s["num_failed"] for s in summaries),
        "failed": [f for s in summaries for f in s["failed"]],
        "seconds": seconds,
        "answers_per_second": round(done / seconds, 3) if seconds > 0 else 0.0,
        "out_path": str(out_path),
        "world_size": len(summaries),
        "shards": [s["out_path"] for s in summaries],
    }


def run_sharded(
    items: Sequence[QAItem],
    out_path: str | os.PathLike,
    run: Callable[[list[QAItem], Path], dict[str, Any]],
    *,
    strategy: str = "contiguous",
) -> dict[str, Any]:
    """Run `run(shard_items, shard_file)` (a `run_videoqa`-like function returning its summary) on this rank's shard,
    then merge on rank 0. Without torchrun it is `run(items, out_path)` after resuming from leftover shards.

    Returns:
        On every rank: the run summary over all ranks (`run_videoqa`'s keys, with "done", "failed" ... summed,
        "seconds" the slowest rank's, plus "world_size" and "shards"). The merged file is complete
        when the call returns, on every rank.
    """
    rank, size = world()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    leftovers = [path for path, w in _shard_files(out).items() if w != size]
    if size == 1:
        _seed(out, items, items, leftovers)
        return _combine([run(list(items), out)], len(items), out)
    mine = shard(items, rank, size, strategy)
    part = shard_path(out, rank, size)
    _seed(part, items, mine, ([out] if out.exists() else []) + leftovers)
    summary = run(mine, part)
    summaries: list[Any] = [None] * size
    dist.all_gather_object(summaries, summary)
    if rank == 0:
        merge_shards(items, [shard_path(out, r, size) for r in range(size)], out)
    dist.barrier()
    return _combine(summaries, len(items), out)


def sharded_videoqa(
    model: torch.nn.Module,
    processor: Any,
    items: Sequence[QAItem],
    video_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    strategy: str = "contiguous",
    **kwargs: Any,
) -> dict[str, Any]:
    """`run_videoqa` over this rank's shard (see `run_sharded`); progress bars on rank 0 only.

    Args:
        model, processor, items, video_dir, out_path: as `run_videoqa`.
        strategy: "contiguous" or "strided" (see `shard`).
        **kwargs: `run_videoqa`'s options (dataset, batch_size, max_new_tokens, num_frames, num_workers, progress).
    """
    rank, _ = world()
    kwargs["progress"] = kwargs.get("progress", True) and rank == 0

    def run(mine: list[QAItem], path: Path) -> dict[str, Any]:
        return run_videoqa(model, processor, mine, video_dir, path, **kwargs)

    return run_sharded(items, out_path, run, strategy=strategy)
