"""Sharded VideoQA inference: shards cover every question once, rank 0 merges in the original order with each answer
on its own question, a real 2-process `torchrun` (gloo, CPU) gives byte for byte the file of a 1-process run, and a
run resumes from the shards of a run with another number of processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from videopanda import VideoPandaForCausalLM
from videopanda.configuration import variant_config
from videopanda.data.synth import generate
from videopanda.eval.commands import main
from videopanda.eval.sharding import merge_shards, run_sharded, shard, shard_path
from videopanda.eval.videoqa import QAItem, read_qa

REPO = Path(__file__).resolve().parents[1]


# -- shards and merging (no model) -------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["contiguous", "strided"])
@pytest.mark.parametrize(("n", "world"), [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_shards_cover_every_item_once(strategy, n, world):
    items = list(range(n))
    shards = [shard(items, r, world, strategy) for r in range(world)]
    assert sorted(x for s in shards for x in s) == items
    assert max(map(len, shards)) - min(map(len, shards)) <= (1 if strategy == "strided" else -(-n // world))
    if strategy == "contiguous":
        assert [x for s in shards for x in s] == items
    else:
        assert shards[0] == items[::world]


def test_shard_errors_and_names(tmp_path):
    with pytest.raises(ValueError, match="rank 2 is not in"):
        shard([1], 2, 2)
    with pytest.raises(ValueError, match="unknown shard strategy 'random'"):
        shard([1], 0, 2, "random")
    assert shard_path(tmp_path / "pred.jsonl", 1, 4) == tmp_path / "pred.rank1-of-4.jsonl"


def items_abc() -> list[QAItem]:
    return [QAItem(f"q{i}", f"v{i // 2}", f"question {i}?", f"answer {i}") for i in range(5)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_merge_restores_the_original_order_and_refuses_misalignment(tmp_path):
    items = items_abc()
    records = [item.record(f"pred {i}") for i, item in enumerate(items)]
    parts = [write_jsonl(tmp_path / f"p.rank{r}-of-2.jsonl", records[r::2]) for r in range(2)]  # strided shards
    out = tmp_path / "p.jsonl"
    assert merge_shards(items, parts, out) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    write_jsonl(parts[1], records[1::2][:-1])  # a rank did not answer one question
    assert merge_shards(items, parts, out) == 1

    shifted = [{**r, "pred": records[i + 1]["pred"], "question": records[i + 1]["question"]}
               for i, r in enumerate(records[:-1])]  # the peer bug: answers one line off
    write_jsonl(parts[1], shifted[1::2])
    with pytest.raises(ValueError, match="line for question 'q1' holds question 'question 2\\?'.*misaligned"):
        merge_shards(items, parts, out)
    write_jsonl(parts[1], [{**records[0], "id": "elsewhere"}])
    with pytest.raises(ValueError, match="'elsewhere', which is not in this question set"):
        merge_shards(items, parts, out)
    write_jsonl(parts[1], [{**records[0], "pred": "another"}])
    with pytest.raises(ValueError, match="'q0' has two different answers"):
        merge_shards(items, parts, out)


def test_one_process_resumes_from_leftover_shards_and_refuses_foreign_ones(tmp_path):
    items = items_abc()
    records = [item.record(f"pred {i}") for i, item in enumerate(items)]
    out = tmp_path / "p.jsonl"
    write_jsonl(shard_path(out, 0, 2), records[:3])  # a 2-process run, killed
    write_jsonl(shard_path(out, 1, 2), records[3:4])
    seen = []

    def run(mine: list[QAItem], path: Path) -> dict:
        seen.append(path.read_text())  # what the run finds in its output file before answering
        return {"total": len(mine), "done": 1, "skipped_existing": 4, "num_failed": 0, "failed": [], "seconds": 1.0,
                "out_path": str(path)}

    summary = run_sharded(items, out, run)
    assert seen == ["".join(json.dumps(r) + "\n" for r in records[:4])]
    assert summary["world_size"] == 1 and summary["done"] == 1 and summary["shards"] == [str(out)]
    write_jsonl(shard_path(out, 1, 2), [{**records[4], "id": "elsewhere"}])
    with pytest.raises(ValueError, match="'elsewhere', which is not in this question set"):
        run_sharded(items, out, run)


# -- real runs with a tiny model ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory, smollm2_tokenizer) -> dict[str, Path]:
    """A tiny random model folder (its own, not the shared `tiny_model`: its LLM weights are scaled up so that
    answers differ) and synthetic clips with questions."""
    root = tmp_path_factory.mktemp("sharding")
    torch.manual_seed(0)
    model = VideoPandaForCausalLM(variant_config("videopanda-tiny", video_token_index=49152))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and not name.startswith("video_tower"):
                p.normal_(0, 0.3)
    model.save_pretrained(root / "model")
    smollm2_tokenizer.save_pretrained(root / "model")
    generate(root / "data", n=6, seed=0, splits=(0.5, 0.0, 0.5), num_frames=8, size=64, progress=False)
    return {"model": root / "model", "data": root / "data"}


def videoqa_args(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    data = setup["data"]
    return ["videoqa", "--dataset", "synth", "--questions", str(data / "test_q.json"), "--answers",
            str(data / "test_a.json"), "--video-dir", str(data / "videos"), "--out", str(out), "--model",
            str(setup["model"]), "--max-new-tokens", "6", "--batch-size", "3", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def one_process(setup, tmp_path_factory) -> Path:
    """The output folder of a plain 1-process run."""
    out = tmp_path_factory.mktemp("one")
    assert main(["-v", *videoqa_args(setup, out)]) == 0
    return out


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_one_process_file(setup, one_process, tmp_path):
    pytest.importorskip("torch.distributed.run")
    out = tmp_path / "two"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             str(_free_port()), "-m", "videopanda.eval.commands",
                             *videoqa_args(setup, out, "--shard", "strided")],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    items = read_qa(setup["data"] / "test_q.json", setup["data"] / "test_a.json")
    reference = (one_process / "predictions.jsonl").read_bytes()
    assert (out / "predictions.jsonl").read_bytes() == reference
    records = lines(out / "predictions.jsonl")
    assert [r["id"] for r in records] == [i.question_id for i in items]
    assert all((r["question"], r["answer"]) == (i.question, i.answer) for r, i in zip(records, items))
    assert len({r["pred"] for r in records}) > len(records) // 2  # the answers differ, so a shift would show
    for rank in range(2):  # each rank wrote its own strided shard, answers on their own questions
        part = lines(out / f"predictions.rank{rank}-of-2.jsonl")
        assert [r["id"] for r in part] == [i.question_id for i in items[rank::2]]
    run = json.loads((out / "results.json").read_text())["run"]
    assert run["world_size"] == 2 and run["done"] == len(items) and run["num_failed"] == 0
    assert json.loads(result.stdout)["done"] == len(items)  # printed once, by rank 0

    # Resume with one process from the two shards alone (no merged file): nothing is generated again.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for rank in range(2):
        shutil.copy(out / f"predictions.rank{rank}-of-2.jsonl", resumed)
    part = resumed / "predictions.rank1-of-2.jsonl"
    part.write_text("".join(part.read_text().splitlines(keepends=True)[:-2]))  # rank 1 was killed 2 answers early
    assert main(["-v", *videoqa_args(setup, resumed)]) == 0
    run = json.loads((resumed / "results.json").read_text())["run"]
    assert run["done"] == 2 and run["skipped_existing"] == len(items) - 2
    assert (resumed / "predictions.jsonl").read_bytes() == reference
