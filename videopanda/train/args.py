"""Arguments of `videopanda train` and the paper's stages. Standard library only, so `--help` is instant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_MODEL = "videopanda-default"

# The paper's stages (spec 5.1): which modules learn, and the learning rates of the reference scripts.
STAGES: dict[str, dict[str, Any]] = {
    "prealign": dict(train_llm=False, lr=4e-5, visual_lr=4e-4, warmup_ratio=0.03),
    "pretrain": dict(train_llm=True, lr=4e-5, visual_lr=4e-5, warmup_ratio=0.01),
    "finetune": dict(train_llm=True, lr=2e-5, visual_lr=2e-5, warmup_ratio=0.01),
}


@dataclass
class TrainArgs:
    """Arguments of `videopanda train` (each field is a --flag)."""

    data: str
    """Training JSON in LLaVA/Video-LLaVA format, or synth:SEED for the endless synthetic video-QA stream."""
    out: str
    """Output folder: checkpoints, logs, final weights."""
    stage: str = "finetune"
    """prealign (STAB + projector only), pretrain or finetune (everything, or LoRA on the LLM with --lora-r)."""
    model: str = DEFAULT_MODEL
    """Starting point: 'videopanda-default', a saved folder, or an official checkpoint folder."""
    media_root: str | None = None
    """Folder the media paths of the JSON are relative to (default: the JSON's folder)."""
    steps: int = 0
    """Optimizer steps; 0 = one epoch (the paper trains one epoch per stage)."""
    batch_size: int = 8
    """Samples per process per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float | None = None
    """LLM learning rate (default: the stage's)."""
    visual_lr: float | None = None
    """STAB + projector learning rate (default: the stage's)."""
    warmup_ratio: float | None = None
    """Fraction of steps of linear warm-up before the cosine decay (default: the stage's)."""
    weight_decay: float = 0.0
    lora_r: int = 0
    """LoRA rank for the LLM (0 = no LoRA: the stage decides whether the LLM trains fully)."""
    lora_alpha: int = 32
    max_length: int = 4096
    """Samples longer than this (after visual expansion) are skipped and counted."""
    max_skip_fraction: float = 0.05
    """Stop with an error when more than this fraction of the samples seen so far had to be skipped."""
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    num_workers: int = 4
    seed: int = 42
    dtype: str = "auto"
    """auto = bfloat16 autocast on GPU, float32 on CPU."""
    gradient_checkpointing: bool = False
    flip: bool = False
    """Random horizontal flips of whole clips (augmentation; wrong for data asking about left/right motion)."""
    resume: bool = False
    """Continue from the newest checkpoint in --out."""
    max_minutes: float = 0.0
    """Stop cleanly (checkpoint + final weights) after this many minutes of training; 0 = no limit."""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"--stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        for name in ("batch_size", "grad_accum", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        stage = STAGES[self.stage]
        self.lr = stage["lr"] if self.lr is None else self.lr
        self.visual_lr = stage["visual_lr"] if self.visual_lr is None else self.visual_lr
        self.warmup_ratio = stage["warmup_ratio"] if self.warmup_ratio is None else self.warmup_ratio


