"""TensorBoard logging of a training run (`--tensorboard`, on by default): rank 0 writes OUT/tensorboard/.

Every numeric field of a `train_log.jsonl` record (loss, lr, tokens_per_s, skipped, and whatever a recipe adds) becomes
a scalar `train/<field>` at that record's step. Without the `tensorboard` package the run goes on with the JSONL log
only, after one line on stderr saying how to get it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def open_writer(out: Path, enabled: bool, rank: int) -> Any:
    """A `SummaryWriter` on OUT/tensorboard for rank 0, or None (other ranks, disabled, or not installed)."""
    if not enabled or rank != 0:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("note: tensorboard is not installed, so the run logs to train_log.jsonl only "
              "(pip install tensorboard, or the [train] extra; --no-tensorboard silences this)", file=sys.stderr)
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def write_record(writer: Any, record: dict[str, Any]) -> None:
    """One train_log.jsonl record as scalars at its step (no-op without a writer)."""
    if writer is None:
        return
    for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(f"train/{key}", value, record["step"])
    writer.flush()
