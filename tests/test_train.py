"""The real training recipe (`videopanda train`) at toy scale on CPU: outputs, exact resume, LoRA, prealign, two
processes = one process, and clean failures.

Everything runs through `videopanda.cli.main` in-process (a tiny 2-layer LLM with the real SmolLM2 tokenizer and
a 12-clip synthetic data set, ~1 s a step pair), except the two-process run, which is a real `torchrun` (gloo).
A larger learning rate than the stages' defaults makes every step move the weights visibly.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import videopanda.train.recipe as recipe
from videopanda import VideoPandaConfig, VideoPandaForCausalLM, VideoPandaProcessor
from videopanda.cli import main
from videopanda.configuration import variant_config
from videopanda.data.sampler import LengthGroupedOrder, LengthGroupedStepBatches, estimate_lengths, visual_tokens
from videopanda.data.synth import generate
from videopanda.train.args import TrainArgs

REPO = Path(__file__).resolve().parents[1]
VISUAL = recipe.VISUAL_PREFIXES
FAST_LR = ["--lr", "1e-3", "--visual-lr", "1e-3"]


class Setup:
    """Paths shared by the tests: `model` (STAB dropout 0.5, the default), `model_nodrop` (dropout 0), `data`."""

    def __init__(self, root: Path, model: Path, model_nodrop: Path, data: Path) -> None:
        self.root, self.model, self.model_nodrop, self.data = root, model, model_nodrop, data

    def args(self, out: Path, *extra: object, steps: int = 4, model: Path | None = None) -> list[str]:
        """`videopanda -v train ...` (-v: leave this process's warnings and logging configuration alone)."""
        return ["-v", "train", "--data", str(self.data), "--out", str(out), "--model", str(model or self.model),
                "--steps", str(steps), "--save-every", "2", "--log-every", "1", "--batch-size", "2",
                "--num-workers", "0", "--stage", "finetune", *map(str, extra)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer) -> Setup:
    pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("train")
    folders = []
    for name, extra in (("model", {}), ("model_nodrop", {"dropout": 0.0})):
        torch.manual_seed(0)
        config = variant_config("videopanda-tiny", video_token_index=49152, **extra)
        VideoPandaForCausalLM(config).save_pretrained(root / name)
        smollm2_tokenizer.save_pretrained(root / name)
        folders.append(root / name)
    VideoPandaProcessor.from_pretrained(folders[0])  # the folder is a complete model
    generate(root / "data", n=12, seed=0, num_frames=8, size=64, progress=False)
    return Setup(root, *folders, root / "data" / "train.json")


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def losses(out: Path) -> torch.Tensor:
    return torch.tensor([r["loss"] for r in read_log(out)], dtype=torch.float64)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# The data order (pure functions, no model)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_and_micro_batches_partition_the_global_batch(shuffle):
    """Whatever the process count, the micro-batches of all ranks of a step are that step's global batch."""
    n, global_batch, seed = 11, 4, 3
    for world, per_rank, accum in ((1, 4, 1), (2, 2, 1), (4, 1, 1), (2, 1, 2), (1, 2, 2)):
        args = TrainArgs(data="x", out="y", batch_size=per_rank, grad_accum=accum, seed=seed)
        ranks = [list(recipe.StepBatches(n, args, r, world, 0, 5, shuffle=shuffle)) for r in range(world)]
        for step in range(5):
            got = sorted(i for r in range(world) for b in ranks[r][step * accum:(step + 1) * accum] for i in b)
            assert got == sorted(recipe.step_indices(step, n, global_batch, seed, shuffle)), (world, accum, step)
        # with positions: each sample's slot in the global stream, unique and gap-free
        keyed = [list(recipe.StepBatches(n, args, r, world, 0, 5, shuffle=shuffle, positions=True))
                 for r in range(world)]
        assert sorted(p for r in keyed for b in r for _, p in b) == list(range(5 * global_batch))
        # a resumed sampler yields exactly the tail of the uninterrupted one
        tail = list(recipe.StepBatches(n, args, 0, world, 2, 5, shuffle=shuffle))
        assert tail == ranks[0][2 * accum:]


@pytest.mark.parametrize("world,batch,accum,group", [(1, 4, 1, 1), (2, 2, 1, 1), (4, 1, 1, 1), (2, 1, 2, 3),
                                                      (2, 2, 2, 2), (3, 1, 1, 4)])
def test_length_grouped_batches(world, batch, accum, group):
    """--group-by-length: megabatches sorted longest first, every index once per epoch, and the ranks of a step
    together get exactly the global batch one process gets (same samples, same stream positions), resumable."""
    n, seed, steps = 23, 7, 7  # n is no multiple of any megabatch: short last megabatches, steps across epochs
    lengths = np.random.default_rng(0).integers(10, 500, n)
    micro, mega = batch * world, group * batch * world
    order = LengthGroupedOrder(lengths, seed, mega)
    for epoch in (0, 1, 2):
        stream = order.epoch(epoch)
        assert sorted(stream.tolist()) == list(range(n))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for s in range(0, n, mega):
            assert sorted(stream[s: s + mega].tolist()) == sorted(perm[s: s + mega])  # a reordered megabatch
            assert (np.diff(lengths[stream[s: s + mega]]) <= 0).all()  # longest first

    def sampler(rank: int, n_ranks: int, per_rank: int, start: int = 0) -> list:
        return list(LengthGroupedStepBatches(lengths, batch_size=per_rank, grad_accum=accum, seed=seed,
                                             group_size=group, rank=rank, world=n_ranks, start=start, stop=steps,
                                             positions=True))

    ranks = [sampler(r, world, batch) for r in range(world)]
    single = sampler(0, 1, micro)  # one process, the same global micro-batch
    assert all(len(b) == batch for r in ranks for b in r)
    for k in range(steps * accum):
        assert sorted(p for r in ranks for p in r[k]) == sorted(single[k]), k
    positions = sorted(p for _, p in (x for r in ranks for b in r for x in b))
    assert positions == list(range(steps * accum * micro))  # each stream slot once
    by_position = {p: i for _, b in enumerate(single) for i, p in b}
    assert all(by_position[p] == order.slice(p, 1)[0] for p in range(0, len(positions), 5))
    for r in range(world):  # a resumed sampler yields exactly the tail of the uninterrupted one
        assert sampler(r, world, batch, start=3) == ranks[r][3 * accum:]
    plain = list(LengthGroupedStepBatches(lengths, batch_size=batch, grad_accum=accum, seed=seed, group_size=group,
                                          rank=0, world=world, start=0, stop=steps))
    assert plain == [[i for i, _ in b] for b in ranks[0]]


def test_length_estimate_counts_words_and_visual_tokens(setup):
    """The estimate reads only the JSON; for square clips its visual part is the processor's exact count."""
    processor = VideoPandaProcessor.from_pretrained(setup.model)
    items = json.loads(setup.data.read_text())
    lengths = estimate_lengths(items, processor.config)
    words = [sum(len(t["value"].split()) for t in item["conversations"]) for item in items]
    sample = recipe.ConversationDataset(setup.data, processor)[0]
    exact = processor.count_tokens(sample.pixel_values)
    assert exact == visual_tokens(processor.config, processor.config.num_frames)
    assert lengths.tolist() == [w + exact for w in words]
    text_only = {"conversations": [{"from": "human", "value": "a b c"}, {"from": "gpt", "value": "d"}]}
    assert estimate_lengths([text_only, {**text_only, "image": "x.jpg"}], processor.config).tolist() == [
        4, 4 + visual_tokens(processor.config, 1)]


# ---------------------------------------------------------------------------------------------------------------
# End to end through the CLI
# ---------------------------------------------------------------------------------------------------------------


def test_train_end_to_end_writes_checkpoints_log_summary_and_a_loadable_model(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(setup.args(out)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-000002", "checkpoint-000004"]
    assert not list(out.glob(".tmp-*"))
    state = torch.load(out / "checkpoint-000004" / "state.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 4 and state["seen"] == 8 and state["skipped"] == {}
    assert set(state["model"]) >= {k for k in weights(setup.model) if k.startswith(VISUAL)}  # buffers included

    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in log)
    assert log[-1]["lr"] == 0.0  # the cosine schedule ends at zero on the planned last step

    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["steps"] == 4 and summary["seen"] == 8 and summary["final"] == str(out / "final")
    assert summary["final_loss"] == pytest.approx(log[-1]["loss"])

    final = out / "final"  # not the default model: a complete folder
    model = VideoPandaForCausalLM.from_pretrained(final)
    VideoPandaProcessor.from_pretrained(final)
    start, end = weights(setup.model), weights(final)
    assert set(start) == set(end) == set(model.state_dict())
    assert changed(start["video_projector.0.weight"], end["video_projector.0.weight"])
    assert changed(start["language_model.model.layers.0.self_attn.q_proj.weight"],
                   end["language_model.model.layers.0.self_attn.q_proj.weight"])


@pytest.mark.parametrize("extra", [pytest.param([], id="plain"),
                                   pytest.param(["--flip", "--num-workers", "2"], id="flip-2-workers")])
def test_resume_is_exact(setup, tmp_path, monkeypatch, extra):
    """4 steps straight vs 2 steps, stop, --resume: the same losses, learning rates and final weights.

    The tiny STAB keeps its 0.5 dropout, so this also checks the RNG state across the restart; with --flip and
    DataLoader workers, that each sample's flip does not depend on which worker (re)started when.
    """
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(setup.args(a, *FAST_LR, *extra)) == 0

    calls = {"n": 0}

    def stop_before_third_step(*_):  # stands in for --max-minutes running out after step 2
        calls["n"] += 1
        return calls["n"] >= 3

    with monkeypatch.context() as m:
        m.setattr(recipe, "_time_is_up", stop_before_third_step)
        assert main(setup.args(b, *FAST_LR, *extra)) == 0
    assert json.loads((b / "summary.json").read_text())["steps"] == 2
    assert [p.name for p in b.glob("checkpoint-*")] == ["checkpoint-000002"]
    assert main(setup.args(b, *FAST_LR, *extra, "--resume")) == 0

    log_a, log_b = read_log(a), read_log(b)
    assert [r["step"] for r in log_b] == [1, 2, 3, 4]
    assert [r["lr"] for r in log_b] == pytest.approx([r["lr"] for r in log_a], rel=1e-12)  # one 4-step plan
    assert torch.allclose(losses(b), losses(a), rtol=1e-5, atol=0)
    assert losses(a)[3] < losses(a)[0]  # it does learn (so equal losses are not trivially equal)
    wa, wb = weights(a / "final"), weights(b / "final")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-5, atol=1e-7, msg=key)


def test_lora_trains_only_adapters_and_visual_modules(setup, tmp_path, monkeypatch):
    seen: dict[str, list[list[str]]] = {}
    make_optimizer = recipe.make_optimizer

    def spy(model, args, total):
        optimizer, scheduler = make_optimizer(model, args, total)
        names = {id(p): n for n, p in model.named_parameters()}
        seen["groups"] = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
        seen["trainable"] = sorted(recipe.trainable_state(model))
        return optimizer, scheduler

    out = tmp_path / "lora"
    monkeypatch.setattr(recipe, "make_optimizer", spy)
    assert main(setup.args(out, *FAST_LR, "--lora-r", "4", steps=2)) == 0

    visual, other = seen["groups"]
    assert visual and all(n.startswith(VISUAL) for n in visual)
    assert other and all(".lora_A." in n or ".lora_B." in n for n in other)
    layers = VideoPandaConfig.from_pretrained(setup.model).text_config.num_hidden_layers
    assert len(other) == 2 * 7 * layers  # A and B of the 7 projections of each layer
    assert all(k.startswith(VISUAL) or "lora_" in k for k in seen["trainable"])
    state = torch.load(out / "checkpoint-000002" / "state.pt", map_location="cpu", weights_only=False)
    assert sorted(state["model"]) == seen["trainable"]

    # The saved model has the adapters merged: adapted projections changed, every other LLM weight did not.
    start, end = weights(setup.model), weights(out / "final")
    assert set(start) == set(end)  # no peft names left
    for key in start:
        if key.startswith("language_model."):
            adapted = any(f".{t}." in key for t in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"))
            assert changed(start[key], end[key]) == adapted, key
    assert changed(start["video_projector.2.weight"], end["video_projector.2.weight"])

    # A LoRA checkpoint does not fit a full fine-tune of the same folder: a clean error, not a silent restart.
    assert main(setup.args(out, "--resume", steps=4)) == 2


def test_prealign_leaves_the_llm_unchanged(setup, tmp_path):
    out = tmp_path / "prealign"
    assert main([*setup.args(out, *FAST_LR, steps=2), "--stage", "prealign"]) == 0
    start, end = weights(setup.model), weights(out / "final")
    llm = [k for k in start if k.startswith("language_model.")]
    assert llm and all(torch.equal(start[k], end[k]) for k in llm)
    assert all(k.startswith(VISUAL) for k in torch.load(out / "checkpoint-000002" / "state.pt",
                                                         weights_only=False)["model"])
    assert changed(start["video_tower.patch_embedding.weight"], end["video_tower.patch_embedding.weight"])
    assert changed(start["video_projector.0.weight"], end["video_projector.0.weight"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(setup, tmp_path):
    """torchrun with 2 processes x batch 1 = 1 process x batch 2: the same global batches, token-count loss
    normalisation over the global batch, DDP gradient averaging.

    Dropout is off (each process draws its own masks) and the STAB does not learn (--visual-lr 0): its BatchNorm
    normalises with the statistics of the process's own micro-batch, so once its zero-initialised output conv
    learns, 2 x 1 and 1 x 2 differ slightly (no SyncBatchNorm on CPU). The LLM and the projector paths still learn.
    """
    pytest.importorskip("torch.distributed.run")
    common = ["--lr", "1e-3", "--visual-lr", "0", "--warmup-ratio", "0"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(setup.args(one, *common, steps=3, model=setup.model_nodrop)) == 0
    argv = setup.args(two, *common, "--batch-size", "1", steps=3, model=setup.model_nodrop)[1:]  # no -v
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(_free_port()), "-m", "videopanda", *argv],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert [r["step"] for r in read_log(two)] == [1, 2, 3]
    assert torch.allclose(losses(two), losses(one), rtol=1e-5, atol=0), (losses(two), losses(one))
    assert losses(one)[2] < losses(one)[0]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["seen"] == 6  # the whole global batch is counted, not only rank 0's share
    VideoPandaForCausalLM.from_pretrained(two / "final")


def _torchrun(argv: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "--master_port", str(_free_port()), "-m", "videopanda", *argv],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_fsdp_two_processes_match_one_process_and_checkpoints_interchange(setup, tmp_path):
    """torchrun --fsdp (FSDP2 on gloo) with 2 x batch 1 = 1 process x batch 2, with gradient accumulation and
    length-grouped batches: the same loss curve, the same weights, and checkpoints in one format: an FSDP checkpoint
    resumes in one process and a one-process checkpoint resumes under FSDP, both continuing the same curve.

    As in the DDP test, dropout is off and the STAB does not learn (its BatchNorm sees each process's micro-batch).
    The gradient norms are 2.6 to 5.4 here, so clipping at 1 acts: equal curves mean it clips by the global norm.
    """
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 needs torch >= 2.6").fully_shard
    common = ["--lr", "1e-3", "--visual-lr", "0", "--warmup-ratio", "0", "--grad-accum", "2", "--group-by-length",
              "--length-group-size", "2", "--no-tensorboard"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(setup.args(one, *common, steps=3, model=setup.model_nodrop)) == 0
    argv = setup.args(two, *common, "--batch-size", "1", "--fsdp", steps=3, model=setup.model_nodrop)[1:]
    result = _torchrun(argv)
    assert result.returncode == 0, result.stderr[-4000:]
    assert [r["step"] for r in read_log(two)] == [1, 2, 3]
    torch.testing.assert_close(losses(two), losses(one), rtol=1e-4, atol=0)
    assert losses(one)[2] < losses(one)[0]

    # the final folder loads in one process and holds what the run trained: the same weights as one process
    final_one, final_two = weights(one / "final"), weights(two / "final")
    assert final_one.keys() == final_two.keys()
    # Adam divides by sqrt(v): where a gradient is at rounding level, FSDP's other summation order can flip its sign,
    # and that element moves by up to lr per step the other way. So: nearly every element equal to 1e-5, and none
    # further apart than 2 * lr * steps.
    for key in final_one:
        if "running_" not in key and "num_batches" not in key:  # BatchNorm statistics are per process
            diff = (final_two[key].float() - final_one[key].float()).abs()
            assert float((diff > 1e-5).float().mean()) < 1e-3 and float(diff.max()) <= 2 * 1e-3 * 3, key
    reloaded = VideoPandaForCausalLM.from_pretrained(two / "final").state_dict()
    assert all(torch.equal(reloaded[k], final_two[k]) for k in final_two)

    # checkpoints: the same format (weights by name, optimiser state by index) and nearly the same values
    a, b = (torch.load(d / "checkpoint-000002" / "state.pt", map_location="cpu", weights_only=False)
            for d in (one, two))
    assert a["model"].keys() == b["model"].keys() and a["step"] == b["step"] == 2 and a["seen"] == b["seen"]
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    names = [n for n, _ in VideoPandaForCausalLM.from_pretrained(setup.model_nodrop).named_parameters()]
    slots = [n for n in names if n.startswith(VISUAL)] + [n for n in names if not n.startswith(VISUAL)]
    for i, slot in a["optimizer"]["state"].items():
        if slots[i].startswith("video_tower."):  # gradients behind the per-process BatchNorm differ
            continue
        for name, value in slot.items():
            torch.testing.assert_close(b["optimizer"]["state"][i][name], value, rtol=1e-3, atol=1e-7, msg=slots[i])

    # FSDP checkpoint -> one process, and one-process checkpoint -> FSDP: step 3 continues the same curve
    for source, target, launch in ((two, tmp_path / "two_to_one", "main"), (one, tmp_path / "one_to_two", "fsdp")):
        target.mkdir()
        shutil.copytree(source / "checkpoint-000002", target / "checkpoint-000002")
        if launch == "main":
            assert main(setup.args(target, *common, "--resume", steps=3, model=setup.model_nodrop)) == 0
        else:
            result = _torchrun(setup.args(target, *common, "--batch-size", "1", "--fsdp", "--resume", steps=3,
                                          model=setup.model_nodrop)[1:])
            assert result.returncode == 0, result.stderr[-4000:]
        assert [r["step"] for r in read_log(target)] == [3]
        torch.testing.assert_close(losses(target), losses(one)[2:], rtol=1e-4, atol=0)


def test_tensorboard_event_file(setup, tmp_path):
    """Rank 0 writes the log records as TensorBoard scalars in OUT/tensorboard (on by default)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert main(setup.args(out, *FAST_LR, steps=2)) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/skipped"} <= tags
    logged = [(s.step, s.value) for s in events.Scalars("train/loss")]
    assert logged == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in read_log(out)]
    off = tmp_path / "off"
    assert main(setup.args(off, *FAST_LR, "--no-tensorboard", steps=1)) == 0
    assert not (off / "tensorboard").exists()


# ---------------------------------------------------------------------------------------------------------------
# Bad input: exit 2 with one "error:" line, no traceback
# ---------------------------------------------------------------------------------------------------------------


def test_missing_json_fails_cleanly(setup, tmp_path, capsys):
    args = setup.args(tmp_path / "run")
    args[args.index("--data") + 1] = str(tmp_path / "nope.json")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "nope.json" in err and "cannot read training JSON" in err
    assert "Traceback" not in err


def test_unknown_stage_fails_cleanly(setup, tmp_path, capsys):
    assert main([*setup.args(tmp_path / "run"), "--stage", "foo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--stage" in err and "prealign" in err and "'foo'" in err
    assert not (tmp_path / "run").exists()


def test_endless_stream_without_steps_fails_cleanly(setup, tmp_path, capsys):
    args = setup.args(tmp_path / "run", steps=0)
    args[args.index("--data") + 1] = "synth:0"
    assert main(args) == 2
    assert "give --steps" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["synth:x", "synth:", "synth:1:narrow", "synth:1:wide:2"])
def test_bad_synth_data_spec_is_one_clear_error(spec, tmp_path):
    from videopanda.train.args import TrainArgs
    from videopanda.train.recipe import make_dataset

    with pytest.raises(ValueError, match="expected synth:SEED or synth:SEED:wide"):
        make_dataset(TrainArgs(data=spec, out=str(tmp_path)), processor=None)


def test_stacked_lora_sums_the_deltas_and_the_default_file_keeps_the_bundled_ones(tmp_path, monkeypatch):
    """Training on from the bundled default (whose LoRA is already merged) must ship old + new deltas in one file."""
    from safetensors.torch import load_file, save_file

    import videopanda.train.recipe as recipe
    from videopanda.train.lora import stack_lora

    torch.manual_seed(0)
    old = {"m.lora_A": torch.randn(2, 5), "m.lora_B": torch.randn(3, 2), "o.lora_A": torch.randn(2, 5),
           "o.lora_B": torch.randn(4, 2)}
    new = {"m.lora_A": torch.randn(4, 5), "m.lora_B": torch.randn(3, 4)}
    both = stack_lora(old, new)
    assert both["m.lora_A"].shape == (6, 5) and both["m.lora_B"].shape == (3, 6)
    torch.testing.assert_close(both["m.lora_B"] @ both["m.lora_A"],
                               old["m.lora_B"] @ old["m.lora_A"] + new["m.lora_B"] @ new["m.lora_A"])
    assert torch.equal(both["o.lora_A"], old["o.lora_A"])  # layers only the old set adapts are kept

    bundled = tmp_path / "bundled.safetensors"
    save_file(old, str(bundled))
    monkeypatch.setattr(recipe, "DEFAULT_LORA_WEIGHTS", bundled)
    recipe.save_default_lora(new, tmp_path / "lora.safetensors")
    saved = load_file(str(tmp_path / "lora.safetensors"))
    assert all(v.dtype == torch.bfloat16 for v in saved.values()) and saved["m.lora_A"].shape == (6, 5)


@pytest.mark.slow
def test_training_from_the_default_model_ends_in_a_folder_that_ask_loads(setup, tmp_path, capsys):
    """The bundled model trained on (with new LoRA deltas): `final/` is a complete folder that the CLI answers from,
    beside the small files that would replace the bundled ones."""
    out = tmp_path / "run"
    assert main(["-v", "train", "--data", str(setup.data), "--out", str(out), "--steps", "1", "--batch-size", "1",
                 "--num-workers", "0", "--stage", "finetune", "--lora-r", "4", *FAST_LR]) == 0
    final = out / "final"
    assert (final / "visual.safetensors").is_file() and (final / "lora.safetensors").is_file()
    capsys.readouterr()
    clip = next((setup.data.parent / "videos").glob("*.mp4"))
    assert main(["-v", "ask", str(clip), "How many objects are there?", "--model", str(final), "--json",
                 "--max-new-tokens", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["source"]["kind"] == "ours" and result["new_tokens"] >= 1
    visual = load_file(str(final / "visual.safetensors"))
    reloaded = VideoPandaForCausalLM.from_pretrained(final).state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in visual.items())


def test_runs_protect_themselves(setup, tmp_path, capsys):
    """An earlier run is never overwritten by accident; resuming a finished run is a no-op with valid JSON; a damaged
    newest checkpoint is passed over for the older intact one, and the log then holds every step once."""
    out = tmp_path / "run"
    assert main(setup.args(out)) == 0
    plan = capsys.readouterr().err
    assert "trainable of" in plan and "effective batch 2 x 1 accumulation x 1 process(es) = 2" in plan
    before = (out / "checkpoint-000004" / "state.pt").read_bytes()
    assert main(setup.args(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--resume" in err and "--overwrite" in err
    assert (out / "checkpoint-000004" / "state.pt").read_bytes() == before

    assert main(setup.args(out, "--resume")) == 0  # finished: nothing to do, the same summary
    captured = capsys.readouterr()
    assert "already finished" in captured.err and json.loads(captured.out)["final_loss"] is not None

    (out / "checkpoint-000004" / "state.pt").write_bytes(before[: len(before) // 3])  # a crash mid-write
    shutil.rmtree(out / "final")
    assert main(setup.args(out, "--resume")) == 0
    assert "checkpoint-000004 is damaged" in capsys.readouterr().err
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4]
    assert VideoPandaForCausalLM.from_pretrained(out / "final") is not None

    fresh = tmp_path / "fresh"
    assert main(setup.args(fresh, "--resume", steps=2)) == 0
    assert "no checkpoint" in capsys.readouterr().err
    assert main(setup.args(fresh, "--overwrite", steps=2)) == 0
    assert [r["step"] for r in read_log(fresh)] == [1, 2]


def test_a_model_too_large_for_this_cpu_is_refused_before_loading(tmp_path, capsys):
    """The released 7B's shape (official config, weights present but never read): fine-tuning it on a CPU needs
    over 100 GB for weights, gradients and AdamW moments; the refusal comes before any allocation."""
    from official_checkpoint import official_config

    folder = tmp_path / "videopanda_fitu"
    folder.mkdir()
    seven_b = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=32, vocab_size=32000)
    (folder / "config.json").write_text(json.dumps({**official_config(1024), **seven_b}))
    (folder / "model.safetensors").write_bytes(b"")  # never opened: the check comes first
    start = time.perf_counter()
    assert main(["-v", "train", "--model", str(folder), "--data", "synth:0", "--steps", "1",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training") and "GiB" in err and "6.7" in err and "--lora-r" in err
    assert time.perf_counter() - start < 60
