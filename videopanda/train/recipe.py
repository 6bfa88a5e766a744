"""The training recipe: the paper's three stages (prealign, pretrain, finetune) for any Video-Panda model.

Launch with one process (`videopanda train ...`) or many (`torchrun --nproc_per_node 4 -m videopanda train ...`,
DDP over NCCL on GPUs, gloo on CPUs; `--fsdp` shards the model with FSDP2 instead: train/fsdp.py). The data order
is a pure function of (seed, step), length-grouped or not: a resumed run sees exactly the samples it would have seen,
and N processes see the same global batches as one process. The loss is normalised by the token count of the whole
global batch, so the loss curve does not depend on the process count.

Checkpoints (`OUT/checkpoint-000200/`) hold the trainable weights, optimiser, scheduler, step and RNG states, and
are written to a temporary folder then renamed (atomic). `--resume` continues from the newest one.

`train` reads top to bottom: `_setup` (processes, model, data, optimizer, resumed state), `_train_loop` (one
`_train_step` per step, `_Progress` for the log, checkpoints on the way) and `_teardown` (final model, summary).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..data.dataset import ConversationDataset, Sample, SkipCounter, Skipped, collate
from ..data.sampler import LengthGroupedStepBatches, estimate_lengths
from ..data.synth_stream import SynthQAStream
from ..distributed import init_distributed
from ..modeling.videopanda import VideoPandaForCausalLM
from ..processing import VideoPandaProcessor
from ..weights import DEFAULT_LORA_WEIGHTS, DEFAULT_MODEL, save_visual_weights
from . import fsdp
from .args import STAGES, TrainArgs
from .distill import Distiller, save_compressor_apart, setup_distillation
from .lora import add_lora, lora_state_dict, merge_lora, stack_lora
from .tblog import open_writer, write_record

# The reference's names (spec 5.1/5.2): the distillation compressor, when on, trains with the STAB and projector.
VISUAL_PREFIXES = ("video_tower.", "video_projector.", "video_tower_compressor.")

def check_memory(args: TrainArgs, device: torch.device) -> None:
    """On a CPU, refuse before anything is allocated when the weights, gradients and AdamW moments alone (float32,
    counted from the model's shape on the meta device) exceed the memory this machine has available. Activations
    come on top and are not estimated."""
    from ..configuration import VideoPandaConfig
    from ..weights import resolve_model

    available = _available_memory()
    source = resolve_model(args.model)
    if device.type != "cpu" or available is None or source.kind == "default":  # the default model fits (135M)
        return
    with torch.device("meta"):
        shape = VideoPandaForCausalLM(VideoPandaConfig.from_pretrained(source.folder))
    total = sum(p.numel() for p in shape.parameters())
    llm = sum(p.numel() for p in shape.language_model.parameters())
    trainable = total - (llm if args.lora_r or not STAGES[args.stage]["train_llm"] else 0)
    need = 4 * total + 12 * trainable
    if need > available:
        raise ValueError(f"training {args.model} on this CPU needs at least {need / 2**30:.0f} GiB for its weights, "
                         f"gradients and optimizer state alone ({total / 1e9:.2f}B parameters, "
                         f"{trainable / 1e9:.2f}B trainable) and {available / 2**30:.0f} GiB are available; use a "
                         "GPU, --lora-r, or --stage prealign")


def _available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux); None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def setup_model(args: TrainArgs, device: torch.device) -> tuple[VideoPandaForCausalLM, VideoPandaProcessor]:
    model = VideoPandaForCausalLM.from_pretrained(args.model)
    processor = VideoPandaProcessor.from_pretrained(args.model)
    train_llm = STAGES[args.stage]["train_llm"]
    model.requires_grad_(False)
    for name, param in model.named_parameters():
        if name.startswith(VISUAL_PREFIXES):
            param.requires_grad_(True)
    if args.lora_r:
        add_lora(model, args.lora_r, args.lora_alpha)
    elif train_llm:
        model.language_model.requires_grad_(True)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device).train(), processor


def step_indices(step: int, n_items: int, global_batch: int, seed: int, shuffle: bool = True) -> list[int]:
    """Sample indices of one optimizer step: epochs are seeded permutations, concatenated (a stream: in order)."""
    start = step * global_batch
    if not shuffle:
        return [(start + i) % n_items for i in range(global_batch)]
    out: list[int] = []
    while len(out) < global_batch:
        epoch, offset = divmod(start + len(out), n_items)
        perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed + epoch))
        out += perm[offset: offset + global_batch - len(out)].tolist()
    return out


class StepBatches(torch.utils.data.Sampler):
    """Micro-batches of this rank for steps [start, stop): what makes resume and multi-process runs exact."""

    def __init__(self, n_items: int, args: TrainArgs, rank: int, world: int, start: int, stop: int,
                 shuffle: bool = True, positions: bool = False) -> None:
        self.n, self.args, self.rank, self.world, self.start, self.stop = n_items, args, rank, world, start, stop
        self.shuffle, self.positions = shuffle, positions

    def __len__(self) -> int:
        return (self.stop - self.start) * self.args.grad_accum

    def __iter__(self):
        a = self.args
        per_step = a.batch_size * a.grad_accum * self.world
        for step in range(self.start, self.stop):
            idx = step_indices(step, self.n, per_step, a.seed, self.shuffle)
            for micro in range(a.grad_accum):  # micro-batch m of rank r
                base = (micro * self.world + self.rank) * a.batch_size
                batch = idx[base: base + a.batch_size]
                # positions=True: (index, place in the global sample stream) pairs, for `PositionFlip`
                yield [(i, step * per_step + base + j) for j, i in enumerate(batch)] if self.positions else batch


class PositionFlip(torch.utils.data.Dataset):
    """--flip as a pure function of (seed, place of the sample in the global stream), like the data order.

    `ConversationDataset(flip=True)` draws from the torch RNG of whichever process loads the sample: a DataLoader
    worker, re-seeded at every (re)start and fed every num_workers-th batch, so the flips changed with a resume,
    --num-workers and the process count. Here each sample's coin is fixed by (seed, step, slot). Items are
    `(index, position)` pairs from `StepBatches(positions=True)`.
    """

    def __init__(self, data: torch.utils.data.Dataset, seed: int) -> None:
        self.data, self.seed = data, seed

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]) -> Sample | Skipped:
        index, position = key
        sample = self.data[index]
        if isinstance(sample, Sample) and sample.pixel_values is not None \
                and np.random.default_rng([self.seed % 2**32, position]).random() < 0.5:
            sample.pixel_values = sample.pixel_values.flip(-1)  # frames and mask together
            if sample.teacher_pixel_values is not None:  # --distill: the teacher sees the same flip
                sample.teacher_pixel_values = sample.teacher_pixel_values.flip(-1)
        return sample


def make_optimizer(model: torch.nn.Module, args: TrainArgs, total_steps: int):
    from transformers import get_cosine_schedule_with_warmup

    visual = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(VISUAL_PREFIXES)]
    other = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(VISUAL_PREFIXES)]
    groups = [{"params": visual, "lr": args.visual_lr}] + ([{"params": other, "lr": args.lr}] if other else [])
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(args.warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler


def trainable_state(model: torch.nn.Module, full: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Trainable parameters plus every buffer of the visual modules: BatchNorm's running statistics *and* its
    `num_batches_tracked` (matching only "running_" left that counter at its starting value after a resume).
    `full`: take them from this (already gathered, CPU) state dict instead of `model.state_dict()` (--fsdp)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers() if n.startswith(VISUAL_PREFIXES)}
    if full is not None:
        return {k: v for k, v in full.items() if k in names or k in buffers}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in names or k in buffers}


def train_state(model: torch.nn.Module, optimizer) -> tuple[dict | None, dict | None]:
    """(trainable_state, optimizer state dict) to checkpoint. Under --fsdp gathered from the shards, in the same
    format (collective: every rank calls; ranks > 0 get (None, None))."""
    if fsdp.is_sharded(model):
        full, optim = fsdp.full_state(model, optimizer)
        return (None, None) if full is None else (trainable_state(model, full), optim)
    return trainable_state(model), optimizer.state_dict()


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, args: TrainArgs, counter: SkipCounter) -> None:
    """Rank 0 writes; under --fsdp every rank must call it (the states are gathered from the shards). Durable: the
    file is synced before the folder is renamed into place, so a crash or a full disk leaves the previous checkpoint
    as it was."""
    model_state, optim_state = train_state(model, optimizer)
    if model_state is None:
        return
    final = out / f"checkpoint-{step:06d}"
    tmp = out / f".tmp-checkpoint-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {"model": model_state, "optimizer": optim_state, "scheduler": scheduler.state_dict(), "step": step,
             "skipped": counter.skipped, "seen": counter.seen,
             "rng": {"torch": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
             "args": asdict(args)}
    try:
        with open(tmp / "state.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as err:  # torch wraps a full disk in a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"could not write checkpoint {final.name} in {out}: {err}; the previous checkpoint is "
                      "intact") from None
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(out)
    for old in sorted(out.glob("checkpoint-*"))[: -args.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checkpoint(out: Path, mmap: bool = False) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in `out` that reads back, as (folder, state); damaged newer ones are named on stderr and
    passed over. Read with `weights_only=True`: a planted file cannot run code."""
    for folder in sorted((p for p in out.glob("checkpoint-*") if (p / "state.pt").is_file()), reverse=True):
        try:
            return folder, torch.load(folder / "state.pt", map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as err:  # truncated, empty or foreign files fail in many ways inside torch and pickle
            print(f"note: {folder.name} is damaged ({type(err).__name__}); trying an older checkpoint",
                  file=sys.stderr)
    return None


def load_checkpoint(path: Path, state: dict[str, Any], model, optimizer, scheduler, counter: SkipCounter) -> int:
    missing = set(state["model"]) - set(model.state_dict())
    if missing:
        raise ValueError(f"{path}: checkpoint does not fit this model ({sorted(missing)[:3]} ...)")
    if fsdp.is_sharded(model):
        fsdp.load_full_state(model, optimizer, state["model"], state["optimizer"])
    else:
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    counter.skipped, counter.seen = state["skipped"], state["seen"]
    return state["step"]


RUN_FILES = ("checkpoint-*", ".tmp-checkpoint-*", "final", "train_log.jsonl", "summary.json", "tensorboard")


def prepare_out(out: Path, args: TrainArgs) -> None:
    """Refuse to mix two runs in one folder: an earlier run needs --resume (continue) or --overwrite (start over)."""
    earlier = sorted({p.name for pattern in RUN_FILES for p in out.glob(pattern)}) if out.is_dir() else []
    if earlier and args.overwrite:
        for name in earlier:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif earlier and not args.resume:
        raise ValueError(f"--out {out} holds an earlier run ({', '.join(earlier[:4])}); pass --resume to continue it "
                         "or --overwrite to start over")
    elif args.resume and not any(out.glob("checkpoint-*")):
        print(f"note: --resume: no checkpoint in {out} yet, starting from step 0", file=sys.stderr)


def keep_log_until(out: Path, step: int) -> None:
    """A resumed run rewrites the steps after its checkpoint: drop their earlier log lines so none appears twice."""
    log = out / "train_log.jsonl"
    if log.is_file():
        lines = [line for line in log.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        log.write_text("".join(f"{line}\n" for line in lines))


def print_plan(model: torch.nn.Module, args: TrainArgs, samples: int | None, total: int, start: int, world: int,
               device: torch.device) -> None:
    """One screen before the first step: what trains, on what, for how long."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    lines = [f"train {args.stage}: {args.model} -> {args.out}",
             f"  parameters: {trainable:,} trainable of {sum(p.numel() for p in params):,}",
             f"  data: {args.data} ({'endless stream' if samples is None else f'{samples:,} samples'})",
             f"  steps: {start} -> {total}; effective batch {args.batch_size} x {args.grad_accum} accumulation x "
             f"{world} process(es) = {args.batch_size * args.grad_accum * world}",
             f"  schedule: lr {args.lr:g} (visual {args.visual_lr:g}), cosine, warmup ratio {args.warmup_ratio:g}",
             f"  device: {device}{f' x {world}' if world > 1 else ''}; checkpoints every {args.save_every} steps"]
    print("\n".join(lines), file=sys.stderr, flush=True)


def save_final(out: Path, model: VideoPandaForCausalLM, processor: VideoPandaProcessor, args: TrainArgs) -> Path:
    """A complete model folder (LoRA merged) that `ask`, `eval`, `serve` and `from_pretrained` load, whatever the
    starting model. From the default model, also the small files it ships (STAB + projector, LoRA deltas), which
    replace those in `videopanda/assets/default/` to make a new bundled default."""
    target = out / "final"
    if args.model == DEFAULT_MODEL:
        save_visual_weights(model, target / "visual.safetensors")
        if args.lora_r:
            save_default_lora(lora_state_dict(model), target / "lora.safetensors")
    merge_lora(model)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


def save_default_lora(state: dict[str, torch.Tensor], path: Path) -> None:
    """The default model's LoRA file: the bundled deltas (already merged into the weights this run started from)
    stacked with the new ones, in bfloat16 (half the size; the deltas are small next to the weights they add to)."""
    from safetensors.torch import load_file, save_file

    if DEFAULT_LORA_WEIGHTS.is_file():
        state = stack_lora(load_file(str(DEFAULT_LORA_WEIGHTS)), state)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(path))


def save_final_sharded(out: Path, model, processor: VideoPandaProcessor, args: TrainArgs) -> Path | None:
    """`save_final` under --fsdp: the full weights are gathered (every rank calls), rank 0 writes the same files a
    non-FSDP run writes (None on the other ranks)."""
    full, _ = fsdp.full_state(model)
    if full is None:
        return None
    target = out / "final"
    if args.model == DEFAULT_MODEL:
        from safetensors.torch import save_file

        target.mkdir(parents=True, exist_ok=True)
        visual = {k: v.contiguous() for k, v in full.items() if k.startswith(VISUAL_PREFIXES)}
        save_file(visual, str(target / "visual.tmp"))
        os.replace(target / "visual.tmp", target / "visual.safetensors")
    else:
        model.save_pretrained(target, state_dict=dict(full))  # save_pretrained empties the dict it is given
        processor.save_pretrained(target)
    return target


def make_batch_sampler(data: torch.utils.data.Dataset, args: TrainArgs, rank: int, world: int, start: int,
                       stop: int) -> torch.utils.data.Sampler:
    """This rank's micro-batches of steps [start, stop): `StepBatches`, or length-grouped (--group-by-length)."""
    positions = isinstance(data, PositionFlip)
    if args.group_by_length:
        base = data.data if positions else data
        lengths = estimate_lengths(base.items, base.processor.config)
        return LengthGroupedStepBatches(lengths, batch_size=args.batch_size, grad_accum=args.grad_accum,
                                        seed=args.seed, group_size=args.length_group_size, rank=rank, world=world,
                                        start=start, stop=stop, positions=positions)
    return StepBatches(len(data), args, rank, world, start, stop, shuffle=not isinstance(data, SynthQAStream),
                       positions=positions)


def make_dataset(args: TrainArgs, processor: VideoPandaProcessor, teacher_inputs=None) -> torch.utils.data.Dataset:
    """A LLaVA-format JSON file, or `synth:SEED` for the endless in-memory synthetic video-QA stream."""
    if args.data.startswith("synth:"):
        _, seed, *rest = args.data.split(":")
        if not seed.isdigit() or rest not in ([], ["wide"]):
            raise ValueError(f"--data {args.data}: expected synth:SEED or synth:SEED:wide")
        return SynthQAStream(processor, seed=int(seed), teacher_inputs=teacher_inputs, wide=rest == ["wide"])
    data = ConversationDataset(args.data, processor, media_root=args.media_root, max_length=args.max_length,
                               teacher_inputs=teacher_inputs)
    return PositionFlip(data, args.seed) if args.flip else data  # flips by position: see PositionFlip


@dataclass
class _Run:
    """One training run as `_setup` builds it: where it runs, what it trains, and its steps [start, total)."""

    args: TrainArgs
    rank: int
    world: int
    device: torch.device
    out: Path
    model: VideoPandaForCausalLM
    processor: VideoPandaProcessor
    distiller: Distiller | None
    sharded: bool  # --fsdp over several processes
    data: torch.utils.data.Dataset
    optimizer: torch.optim.Optimizer
    scheduler: Any
    counter: SkipCounter
    start: int
    total: int

    @property
    def saves(self) -> bool:
        """Whether this process calls `save_checkpoint`: rank 0, and every rank of a sharded run (the states are
        gathered from the shards; rank 0 writes)."""
        return self.rank == 0 or self.sharded

    def save(self, step: int) -> None:
        save_checkpoint(self.out, step, self.model, self.optimizer, self.scheduler, self.args, self.counter)


def train(args: TrainArgs) -> dict[str, Any]:
    """Train one stage as `args` say (resuming with --resume); returns the summary that OUT/summary.json holds."""
    run = _setup(args)
    done = _finished_summary(run)
    if done is not None:
        return done
    steps, last_loss = _train_loop(run)
    return _teardown(run, steps, last_loss)


def _setup(args: TrainArgs) -> _Run:
    """Processes, device, model (sharded with --fsdp), data, optimizer and scheduler, then the newest checkpoint's
    state with --resume (its RNG states included)."""
    if args.lora_r and importlib.util.find_spec("peft") is None:
        raise ValueError("--lora-r needs the package 'peft': pip install 'videopanda[train]'")
    rank, world = init_distributed()
    out = Path(args.out)
    if rank == 0:
        prepare_out(out, args)  # before anything is loaded: a wrong --out costs nothing
    if world > 1:
        dist.barrier()
    device = _pick_device()
    torch.manual_seed(args.seed)
    args.batch_size = args.batch_size or (8 if device.type == "cuda" else 2)
    check_memory(args, device)
    model, processor = setup_model(args, device)
    distiller = setup_distillation(model, args, device)  # --distill: frozen teacher; compressor joins the model
    sharded = args.fsdp and world > 1
    if sharded:
        fsdp.shard_model(model, device)  # before the optimizer: it must hold the sharded parameters
    elif args.fsdp and rank == 0:
        print("note: --fsdp with one process: nothing to shard, training as usual", file=sys.stderr)
    data = make_dataset(args, processor, distiller.teacher_inputs if distiller else None)
    per_step = args.batch_size * args.grad_accum * world
    if isinstance(data, SynthQAStream) and not args.steps:
        raise ValueError("--data synth:SEED is an endless stream: give --steps")
    total = args.steps or math.ceil(len(data) / per_step)
    optimizer, scheduler = make_optimizer(model, args, total)
    out.mkdir(parents=True, exist_ok=True)
    counter = SkipCounter()
    start = 0
    found = read_checkpoint(out, mmap=sharded) if args.resume else None
    if found is not None:
        start = load_checkpoint(*found, model, optimizer, scheduler, counter)
        if rank == 0:
            keep_log_until(out, start)
    return _Run(args, rank, world, device, out, model, processor, distiller, sharded, data, optimizer, scheduler,
                counter, start, total)


def _pick_device() -> torch.device:
    """This process's GPU (LOCAL_RANK under torchrun), with TF32 matmuls, or the CPU."""
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def _finished_summary(run: _Run) -> dict[str, Any] | None:
    """The summary of a run in --out that had already finished (resumed at its last step), else None."""
    out = run.out
    if run.start >= run.total and (out / "summary.json").is_file() and (out / "final").is_dir():
        if run.rank == 0:
            print(f"note: the run in {out} already finished at step {run.start}; nothing to do", file=sys.stderr)
        return json.loads((out / "summary.json").read_text())
    return None


def _train_loop(run: _Run) -> tuple[int, float]:
    """Steps [start, total), logged and checkpointed on the way; stops early, after a checkpoint, when
    --max-minutes runs out. Returns the steps reached and the last step's loss."""
    args, world = run.args, run.world
    if run.rank == 0:
        stream = isinstance(run.data, SynthQAStream)
        print_plan(run.model, args, None if stream else len(run.data), run.total, run.start, world, run.device)
    ddp = torch.nn.parallel.DistributedDataParallel(run.model) if world > 1 and not run.sharded else run.model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if run.device.type == "cuda" and args.dtype != "float32" \
        else torch.autocast("cpu", enabled=False)
    micro = iter(_make_loader(run))
    progress = _Progress(run)
    last_loss = float("nan")
    total = run.total
    deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else float("inf")
    for step in range(run.start, total):
        if _time_is_up(deadline, world, run.device):
            if run.saves:
                run.save(step)
            total = step
            break
        batches = [next(micro) for _ in range(args.grad_accum)]
        _count_skips(run, batches)
        step_loss, step_video, tokens = _train_step(run, ddp, autocast, batches)
        last_loss = float(step_loss)
        progress.update(step + 1, last_loss, step_video, tokens)
        if run.saves and ((step + 1) % args.save_every == 0 or step + 1 == total):
            run.save(step + 1)
        if world > 1:
            dist.barrier()
    progress.close()
    return total, last_loss


def _make_loader(run: _Run) -> torch.utils.data.DataLoader:
    """This rank's micro-batches of steps [start, total).

    The loader gets its own generator: by default `iter(loader)` draws its workers' base seed from the global torch
    RNG, one draw more in a resumed run than in an uninterrupted one at the same step, which shifted every later
    dropout mask and made resume inexact.
    """
    args = run.args
    return torch.utils.data.DataLoader(
        run.data, batch_sampler=make_batch_sampler(run.data, args, run.rank, run.world, run.start, run.total),
        num_workers=args.num_workers, collate_fn=partial(collate, pad_id=run.processor.tokenizer.pad_token_id),
        generator=torch.Generator().manual_seed(args.seed + run.start))


def _count_skips(run: _Run, batches: list[dict[str, Any]]) -> None:
    """Add the step's seen and skipped samples to the run's counter; raise past --max-skip-fraction.

    Every rank counts the whole global batch: the log, summary and checkpoint hold the run's counts (not rank 0's
    share), and all ranks stop together on too many skips (one rank raising alone left the others hanging).
    """
    counts = [(b["seen"], b["skipped"]) for b in batches]
    if run.world > 1:
        gathered: list[Any] = [None] * run.world
        dist.all_gather_object(gathered, counts)
        counts = [c for rank_counts in gathered for c in rank_counts]
    counter = run.counter
    for seen, reasons in counts:
        counter.add(seen, reasons)
    if counter.total > run.args.max_skip_fraction * max(counter.seen, 1) and counter.seen >= 20:
        raise RuntimeError(f"too many skipped samples: {counter.total} of {counter.seen} ({counter.skipped})")


def _train_step(run: _Run, ddp: torch.nn.Module, autocast: torch.autocast,
                batches: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One optimizer step over this rank's micro-batches. Returns the global step's loss and video loss (summed
    over ranks) and the tokens this rank processed."""
    device, world = run.device, run.world
    n_tokens = torch.tensor(float(sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches if "labels" in b)),
                            device=device)
    if world > 1:
        dist.all_reduce(n_tokens)
    n_frames = run.distiller.count_frames(batches, device, world) if run.distiller else None  # valid frames, global
    step_loss = torch.zeros((), device=device)
    step_video = torch.zeros((), device=device)
    tokens = 0
    for i, b in enumerate(batches):
        if "input_ids" not in b:
            continue
        sync = i == len(batches) - 1 or world == 1
        loss, video = _forward(run, ddp, autocast, b, sync, n_tokens, n_frames)
        if video is not None:
            step_video += video.detach() / world
        loss.backward()
        step_loss += loss.detach() / world
        tokens += int(b["attention_mask"].sum())
    torch.nn.utils.clip_grad_norm_([p for p in run.model.parameters() if p.requires_grad], 1.0)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if world > 1:
        dist.all_reduce(step_loss)
        if run.distiller:
            dist.all_reduce(step_video)
    return step_loss, step_video, tokens


def _forward(run: _Run, ddp: torch.nn.Module, autocast: torch.autocast, batch: dict[str, Any], sync: bool,
             n_tokens: torch.Tensor, n_frames: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The loss of one micro-batch (and its video loss with --distill); gradients are synchronised across ranks
    only on the step's last micro-batch (`sync`)."""
    world = run.world
    inputs = {k: (v.to(run.device) if isinstance(v, torch.Tensor) else [x.to(run.device) for x in v])
              for k, v in batch.items() if k in ("input_ids", "labels", "attention_mask", "pixel_values")}
    ctx = ddp.no_sync() if (world > 1 and not sync and not run.sharded) else _null()
    if run.sharded:
        fsdp.set_gradient_sync(run.model, sync)
    with ctx, autocast:
        # loss = sum of token losses / tokens of the global step; DDP averages grads over ranks, hence * world
        if run.distiller is None:
            return ddp(**inputs, num_items_in_batch=n_tokens / world).loss, None
        # LM loss + weight x video loss (per valid frame of the global step): train/distill.py
        return run.distiller.forward(ddp, batch, inputs, n_tokens / world, n_frames / world)


class _Progress:
    """What rank 0 reports as the run goes: train_log.jsonl, TensorBoard (--tensorboard), the tqdm bar, tokens/s."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.log = (run.out / "train_log.jsonl").open("a") if run.rank == 0 else None
        self.writer = open_writer(run.out, run.args.tensorboard, run.rank)
        self.bar = tqdm(total=run.total, initial=run.start, disable=run.rank != 0, desc=f"train {run.args.stage}")
        self.tick, self.tokens = time.perf_counter(), 0

    def update(self, step: int, loss: float, video_loss: torch.Tensor, tokens: int) -> None:
        """After `step` steps: a log record every --log-every steps and at the last one."""
        run, args = self.run, self.run.args
        self.tokens += tokens
        self.bar.update(1)
        if run.rank != 0 or not (step % args.log_every == 0 or step == run.total):
            return
        rate = self.tokens * run.world / (time.perf_counter() - self.tick)
        record = {"step": step, "loss": loss, "lr": run.scheduler.get_last_lr()[0], "tokens_per_s": rate,
                  "skipped": run.counter.total}
        if run.distiller:  # "loss" is the total: lm_loss + distill_weight * video_loss
            record.update(video_loss=float(video_loss), lm_loss=loss - args.distill_weight * float(video_loss))
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()
        write_record(self.writer, record)
        self.bar.set_postfix(loss=f"{loss:.4f}")
        self.tick, self.tokens = time.perf_counter(), 0

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.log is not None:
            self.log.close()


def _teardown(run: _Run, steps: int, last_loss: float) -> dict[str, Any]:
    """The final model (OUT/final), the summary (OUT/summary.json, returned), and the process group closed."""
    counter = run.counter
    summary = {"steps": steps, "final_loss": last_loss if math.isfinite(last_loss) else None,
               "skipped": counter.skipped, "seen": counter.seen}
    if run.device.type == "cuda":
        summary["peak_memory_gib"] = _peak_memory_gib(run.world)
    save_compressor_apart(run.model, run.out / "final", run.rank)  # --distill: final/compressor.safetensors apart
    final = save_final_sharded(run.out, run.model, run.processor, run.args) if run.sharded else None
    if run.rank == 0:
        summary["final"] = str(final or save_final(run.out, run.model, run.processor, run.args))
        (run.out / "summary.json").write_text(json.dumps(summary, indent=2))
    if dist.is_initialized():
        dist.destroy_process_group()
    return summary


def _peak_memory_gib(world: int) -> list[float]:
    """Peak CUDA memory allocated by each rank so far, in GiB (collective)."""
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    if world == 1:
        return [peak]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, peak)
    return gathered


def _time_is_up(deadline: float, world: int, device: torch.device) -> bool:
    """Every rank stops at the same step: rank 0's clock decides."""
    flag = torch.tensor(float(time.monotonic() > deadline), device=device)
    if world > 1:
        dist.broadcast(flag, 0)
    return bool(flag)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
