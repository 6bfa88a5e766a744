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

DISTILL_KINDS = ("none", "languagebind", "hf")


@dataclass
class TrainArgs:
    """Arguments of `videopanda train` (each field is a --flag)."""

    data: str
    """Training JSON in LLaVA/Video-LLaVA format, or synth:SEED for the endless synthetic video-QA stream
    (synth:SEED:wide for the wide stream: varied clip length, frame shape, object size and motion)."""
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
    batch_size: int = 0
    """Samples per process per micro-batch; 0 = 8 on a GPU, 2 on a CPU (the default model at batch 2 peaks near
    6 GB; at 8 it outgrows a 24 GB machine)."""
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
    """Continue from the newest intact checkpoint in --out."""
    overwrite: bool = False
    """Start over in an --out that holds an earlier run (its checkpoints, log and final/ are deleted first)."""
    max_minutes: float = 0.0
    """Stop cleanly (checkpoint + final weights) after this many minutes of training; 0 = no limit."""
    distill: str = "none"
    """Distillation teacher: none, languagebind (the paper's LanguageBind video encoder) or hf (a transformers CLIP or
    SigLIP vision model); adds --distill-weight x the cosine loss on LLM hidden states (docs/training.md)."""
    teacher: str | None = None
    """Teacher folder for --distill: LanguageBind_Video_merge (config.json + weights) or a CLIP/SigLIP folder."""
    distill_weight: float = 1.0
    """Weight of the distillation loss added to the LM loss (the paper: 1)."""
    group_by_length: bool = False
    """Length-grouped batches (the reference's group_by_modality_length): shuffled megabatches sorted by estimated
    length and dealt out evenly to the processes. JSON data only (synth:SEED samples are all about equally long)."""
    length_group_size: int = 1
    """With --group-by-length: global micro-batches per length-sorted megabatch. 1 = the reference (balances the
    processes' loads only); 8-64 also groups similar lengths into a micro-batch, which cuts padding."""
    tensorboard: bool = True
    """TensorBoard scalars (loss, lr, tokens/s, skipped) in OUT/tensorboard, when the tensorboard package is
    installed (rank 0 only)."""
    fsdp: bool = False
    """Shard the model with PyTorch FSDP2 across the torchrun processes (one unit per LLM decoder layer, bf16 compute
    on GPU); for LLMs too large for DDP. Checkpoints stay full state dicts. Not with --lora-r."""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"--stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        for name in ("grad_accum", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 0:
            raise ValueError(f"--batch-size must be >= 1 (or 0 for the device's default), got {self.batch_size}")
        if self.length_group_size < 1:
            raise ValueError(f"--length-group-size must be >= 1, got {self.length_group_size}")
        if self.group_by_length and self.data.startswith("synth:"):
            raise ValueError("--group-by-length needs a JSON data set; the synth:SEED stream needs no grouping")
        if self.fsdp and self.lora_r:
            raise ValueError("--fsdp with --lora-r is not supported: LoRA trains few parameters, so use plain "
                             "torchrun (DDP), or --fsdp without LoRA")
        if self.distill not in DISTILL_KINDS:
            raise ValueError(f"--distill must be one of {', '.join(DISTILL_KINDS)}, got {self.distill!r}")
        if self.distill != "none" and not self.teacher:
            raise ValueError(f"--distill {self.distill} needs --teacher FOLDER (the teacher's config.json and weights)")
        if self.distill != "none" and self.fsdp:
            raise ValueError("--distill with --fsdp is not supported yet (the compressor runs outside the sharded "
                             "forward); use plain torchrun (DDP)")
        stage = STAGES[self.stage]
        self.lr = stage["lr"] if self.lr is None else self.lr
        self.visual_lr = stage["visual_lr"] if self.visual_lr is None else self.visual_lr
        self.warmup_ratio = stage["warmup_ratio"] if self.warmup_ratio is None else self.warmup_ratio


