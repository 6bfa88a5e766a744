"""The evaluation sub-commands: `videopanda eval judge`, `videopanda eval vcgbench` (and a sharded, judged
`videopanda eval videoqa`).

`COMMANDS` holds their rows of the command table (cli.py reads them); `python -m videopanda.eval.commands` runs them
without cli.py (the same rows, the same flags). Every command writes `results.json` and `report.md` (ours beside the
paper's numbers) to its --out folder. Under torchrun the inference is sharded (sharding.py) and rank 0 judges and
reports.

Bad input raises ValueError / FileNotFoundError (printed as one "error:" line, exit status 2, by the caller).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..flags import (
    Command,
    add_device_flags,
    add_model_source_flags,
    add_speed_flags,
    build_parser,
    check_generation,
    run,
)
from .judges import QA_RUBRIC, Judge, LocalJudge, OpenAIJudge, aggregate, judge_qa
from .report import qa_markdown, vcg_markdown, write_report

__all__ = ["COMMANDS", "build_judge", "cmd_judge", "cmd_vcgbench", "cmd_videoqa", "main"]

DATASETS = ("msvd", "msrvtt", "tgif", "activitynet", "synth")
GROUP_KEYS = ("family", "type")  # tried in order by --group-by auto


# -- shared flags ------------------------------------------------------------------------------------------------------
def _temperature(text: str) -> float | None:
    if text == "default":
        return None
    value = float(text)
    if not 0 <= value <= 2:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2, or 'default'; got {text}")
    return value


def _add_judge_args(p: argparse.ArgumentParser, default: str) -> None:
    g = p.add_argument_group("judge")
    g.add_argument("--judge", choices=("openai", "local", "none"), default=default,
                   help="openai: an OpenAI-compatible API; local: a transformers LLM; none: judge-free metrics only "
                        "(default: %(default)s)")
    g.add_argument("--judge-model", default=None,
                   help="API model name ($VIDEOPANDA_JUDGE_MODEL, else gpt-3.5-turbo as the reference), or the "
                        "folder of a local judge LLM (required with --judge local)")
    g.add_argument("--base-url", default=None, help="API root, e.g. http://localhost:8000/v1 ($OPENAI_BASE_URL)")
    g.add_argument("--api-key", default=None, help="API key ($OPENAI_API_KEY; prefer the variable: flags show in ps)")
    g.add_argument("--judge-temperature", type=_temperature, default=0.0,
                   help="0 (default), or 'default' to send none, as the reference did (the API's default applies)")
    g.add_argument("--judge-workers", type=int, default=8, help="API requests in flight (default: %(default)s)")
    g.add_argument("--max-retries", type=int, default=4,
                   help="retries of a failed request or an unparseable reply (default: %(default)s)")
    g.add_argument("--retry-wait", type=float, default=1.0,
                   help="seconds before the first retry, doubled each time (default: %(default)s)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per API request (default: %(default)s)")
    g.add_argument("--cache-dir", default=None,
                   help="judgment cache folder (default: $VIDEOPANDA_CACHE/judgments, ~/.cache/videopanda/judgments)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the judgment cache")
    g.add_argument("--judge-batch-size", type=int, default=8, help="local judge: prompts per batch (default: 8)")
    g.add_argument("--judge-device", default="auto", help="local judge: auto, cpu, cuda ... (default: auto)")
    g.add_argument("--judge-dtype", default="auto", help="local judge: auto, float32, bfloat16 ... (default: auto)")


def _add_inference_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    g = p.add_argument_group("inference")
    add_model_source_flags(g)
    g.add_argument("--batch-size", type=int, default=8, help="questions per generate call (default: %(default)s)")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="(default: %(default)s)")
    g.add_argument("--frames", type=int, default=None, help="frames per video (default: the model's)")
    g.add_argument("--num-workers", type=int, default=2, help="video decoding threads (default: %(default)s)")
    g.add_argument("--shard", choices=("contiguous", "strided"), default="contiguous",
                   help="how torchrun processes split the questions (default: %(default)s)")
    add_device_flags(g, "auto (this rank's GPU under torchrun), cpu, cuda ... (default: %(default)s)")
    add_speed_flags(g, "static KV cache + compiled decoding and compiled element-wise ops (GPU): each new batch size "
                       "compiles once (~1 min for a 7B), then batches run faster (docs/speed.md)")


def build_judge(args: argparse.Namespace) -> Judge | None:
    """The judge the flags ask for (None for --judge none)."""
    if args.judge == "none":
        return None
    cache = None
    if not args.no_cache:
        from ..weights import cache_dir

        cache = args.cache_dir or cache_dir() / "judgments"
    if args.judge == "local":
        if not args.judge_model:
            raise ValueError("--judge local needs --judge-model FOLDER (a transformers causal LM)")
        return LocalJudge(args.judge_model, cache, device=args.judge_device, dtype=args.judge_dtype,
                          batch_size=args.judge_batch_size)
    return OpenAIJudge(args.base_url, args.judge_model, args.api_key, cache, args.max_retries, args.timeout,
                       temperature=args.judge_temperature, workers=args.judge_workers, backoff=args.retry_wait)


def _inference_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.batch_size < 1 or args.num_workers < 0:
        raise ValueError("--batch-size must be >= 1 and --num-workers >= 0")
    check_generation(frames=args.frames, max_new_tokens=args.max_new_tokens, dtype=args.dtype)
    return dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, num_frames=args.frames,
                num_workers=args.num_workers, strategy=args.shard, decoding="compiled" if args.compile else "auto")


def _load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """(`Engine`, its processor) on this rank's device."""
    from ..engine import Engine
    from .sharding import rank_device

    engine = Engine.load(args.model, device=rank_device(args.device), dtype=args.dtype, quantization=args.load_in,
                         subfolder=args.subfolder, revision=args.revision)
    if args.frames is not None:
        engine.processor.config.num_frames = args.frames
    return engine, engine.processor


def _print(summary: dict[str, Any]) -> None:
    print(json.dumps(summary, indent=2))


# -- open-ended VideoQA ------------------------------------------------------------------------------------------------
def _group_key(requested: str, paths: Sequence[str | os.PathLike]) -> str | None:
    """--group-by: a field name, "none", or "auto" (the first of family/type that the predictions carry)."""
    from .videoqa import read_jsonl

    if requested == "none":
        return None
    if requested != "auto":
        return requested
    present = {k for path in paths for record in read_jsonl(path) for k in GROUP_KEYS if k in record}
    return next((k for k in GROUP_KEYS if k in present), None)


def _judge_and_report(result: dict[str, Any], judge: Judge | None, merged: Path, out: Path) -> dict[str, Any]:
    """Judge the merged predictions (when a judge is given), then write results.json and report.md."""
    from .videoqa import read_jsonl

    if judge is not None:
        judged = judge_qa(judge, read_jsonl(merged), progress=True)
        with (out / "judgments.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in judged)
        result["judge"] = {**judge.describe(), "prompt_version": QA_RUBRIC.prompt_version}
        result["judged"] = aggregate(judged, result["scores"]["key"])
    write_report(out, result, qa_markdown(result))
    summary: dict[str, Any] = {"scores": {k: result["scores"][k] for k in ("count", "exact_match", "contains_match",
                                                                         "token_f1")}}
    if judge is not None:
        summary["judged"] = {k: result["judged"][k] for k in ("accuracy", "score", "judged", "unparsed", "failed")}
    return {**summary, "report": str(out / "report.md")}


def cmd_judge(args: argparse.Namespace) -> int:
    """Judge VideoQA predictions (JSONL from `eval videoqa`, or the reference's merge.jsonl): GPT-style accuracy and
    score with an API or local judge, plus judge-free metrics; results.json, judgments.jsonl and report.md."""
    from .videoqa import merge_and_score, read_qa

    if (args.questions is None) != (args.answers is None):
        raise ValueError("give both --questions and --answers, or neither")
    missing = [p for p in args.pred if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"--pred {missing[0]}: no such file")
    items = read_qa(args.questions, args.answers) if args.questions else None
    judge = build_judge(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    merged = out / "predictions.jsonl"
    scores = merge_and_score(args.pred, items, key=_group_key(args.group_by, args.pred), merged_path=merged)
    result = {"dataset": args.dataset, "model": args.model_name, "predictions": list(map(str, args.pred)),
              "scores": scores}
    _print(_judge_and_report(result, judge, merged, out))
    return 0


def cmd_videoqa(args: argparse.Namespace) -> int:
    """Zero-shot open-ended VideoQA (MSVD/MSRVTT/TGIF/ActivityNet format): batched greedy answers, resumable JSONL,
    sharded under torchrun; judge-free scores, and with --judge a GPT-style judge; results.json and report.md."""
    from .sharding import close, sharded_videoqa, world
    from .videoqa import merge_and_score, read_qa

    kwargs = _inference_kwargs(args)  # the flags first: a bad one fails before any file is read
    items = read_qa(args.questions, args.answers)
    if not Path(args.video_dir).is_dir():
        raise FileNotFoundError(f"--video-dir {args.video_dir}: no such folder")
    judge = build_judge(args) if args.judge == "openai" else None  # fail before inference on a missing key
    model, processor = _load_model(args)
    out = Path(args.out)
    run = sharded_videoqa(model, processor, items, args.video_dir, out / "predictions.jsonl", dataset=args.dataset,
                          **kwargs)
    del model
    rank = world()[0]
    close()
    if rank != 0:
        return 0
    if args.judge == "local":
        judge = build_judge(args)
    key = _group_key(args.group_by, [out / "predictions.jsonl"])
    scores = merge_and_score(out / "predictions.jsonl", items, key=key)
    result = {"dataset": args.dataset, "model": args.model, "run": run, "scores": scores}
    summary = _judge_and_report(result, judge, out / "predictions.jsonl", out)
    _print({"done": run["done"], "failed": run["num_failed"], **summary})
    return 0


# -- the Video-ChatGPT benchmark ---------------------------------------------------------------------------------------
def _vcg_predict(args: argparse.Namespace, files: dict[str, str], out: Path) -> dict[str, Any] | None:
    """Answer the benchmark's questions; on rank 0, record the runs in results.json and return them (None elsewhere)."""
    from .sharding import close, world
    from .vcgbench import predict_vcgbench

    if not files:
        raise ValueError("give at least one of --generic, --temporal, --consistency")
    if not args.video_dir or not Path(args.video_dir).is_dir():
        raise FileNotFoundError(f"--video-dir {args.video_dir}: no such folder")
    kwargs = _inference_kwargs(args)
    model, processor = _load_model(args)
    runs = predict_vcgbench(model, processor, files, args.video_dir, out, **kwargs)
    del model
    rank = world()[0]
    close()
    if rank != 0:
        return None
    (out / "results.json").write_text(json.dumps({"benchmark": "vcgbench", "model": args.model, "runs": runs},
                                                 indent=2) + "\n")
    return runs


def _vcg_score(judge: Judge | None, files: dict[str, str], out: Path) -> dict[str, Any]:
    """Score the answers in `out` (those of `files`, else every {kind}.jsonl there); write results.json, report.md."""
    from .vcgbench import KINDS, score_vcgbench

    if judge is None:
        raise ValueError("scoring the Video-ChatGPT benchmark needs a judge: --judge openai or --judge local")
    kinds = list(files) or [kind for kind in KINDS if (out / f"{kind}.jsonl").is_file()]
    if not kinds:
        raise FileNotFoundError(f"{out}: no predictions (generic.jsonl, temporal.jsonl, consistency.jsonl) to score")
    previous = out / "results.json"  # the prediction stage's: which model answered, and how the runs went
    result = json.loads(previous.read_text()) if previous.is_file() else {"benchmark": "vcgbench", "runs": {}}
    result.update(score_vcgbench(judge, {kind: out / f"{kind}.jsonl" for kind in kinds}, out, progress=True))
    write_report(out, result, vcg_markdown(result))
    return {"aspects": {a: s["score"] for a, s in result["aspects"].items()}, "average": result["average"],
            "report": str(out / "report.md")}


def cmd_vcgbench(args: argparse.Namespace) -> int:
    """The Video-ChatGPT benchmark: answer generic/temporal/consistency questions (resumable, sharded under torchrun),
    then score correctness, detail, context, temporal and consistency (0-5) with a judge; report.md beside the paper."""
    from .vcgbench import KINDS

    out = Path(args.out)
    files = {kind: getattr(args, kind) for kind in KINDS if getattr(args, kind)}
    early = args.stage == "score" or (args.stage == "all" and args.judge == "openai")
    judge = build_judge(args) if early else None  # fail before inference on a missing key
    if args.stage != "score":
        runs = _vcg_predict(args, files, out)
        if runs is None:  # not rank 0
            return 0
        if args.stage == "predict":
            _print({kind: {k: r[k] for k in ("total", "done", "num_failed")} for kind, r in runs.items()})
            return 0
    _print(_vcg_score(judge or build_judge(args), files, out))
    return 0


# -- the rows of the command table -------------------------------------------------------------------------------------
def judge_flags(judge: argparse.ArgumentParser) -> None:
    judge.add_argument("--pred", nargs="+", required=True, help="prediction JSONL file(s), e.g. one per shard")
    judge.add_argument("--out", required=True, help="output folder")
    judge.add_argument("--questions", default=None, help="test_q.json: score against this set (missing counted)")
    judge.add_argument("--answers", default=None, help="test_a.json, aligned with --questions")
    judge.add_argument("--dataset", choices=DATASETS, default=None, help="benchmark, for the paper's row")
    judge.add_argument("--model-name", default=None, help="the model that made the predictions, for the report")
    judge.add_argument("--group-by", default="auto", help="field to break scores down by: auto (family or type), "
                                                          "a field name, or none (default: auto)")
    _add_judge_args(judge, "openai")


def vcgbench_flags(vcg: argparse.ArgumentParser) -> None:
    vcg.add_argument("--generic", default=None, help="generic_qa.json (correctness, detail, context)")
    vcg.add_argument("--temporal", default=None, help="temporal_qa.json (temporal)")
    vcg.add_argument("--consistency", default=None, help="consistency_qa.json (consistency)")
    vcg.add_argument("--video-dir", default=None, help="the benchmark's videos ({video_name}.mp4 ...)")
    vcg.add_argument("--out", required=True, help="output folder: {generic,temporal,consistency}.jsonl, judgments/, "
                                                  "results.json, report.md")
    vcg.add_argument("--stage", choices=("all", "predict", "score"), default="all",
                     help="predict: answers only; score: judge the answers already in --out (default: all)")
    _add_inference_args(vcg, max_new_tokens=1024)
    _add_judge_args(vcg, "openai")


def videoqa_flags(vqa: argparse.ArgumentParser) -> None:
    vqa.add_argument("--dataset", default="msvd", choices=DATASETS,
                     help="file naming of the benchmark (activitynet adds 'v_') (default: %(default)s)")
    vqa.add_argument("--questions", required=True, help="test_q.json")
    vqa.add_argument("--answers", required=True, help="test_a.json (aligned with the questions by index)")
    vqa.add_argument("--video-dir", required=True, help="folder of the videos")
    vqa.add_argument("--out", required=True, help="output folder: predictions.jsonl (resumable), results.json, "
                                                  "report.md")
    vqa.add_argument("--group-by", default="auto", help="field to break scores down by (default: auto)")
    _add_inference_args(vqa, max_new_tokens=32)
    _add_judge_args(vqa, "none")


COMMANDS = (
    Command(("eval", "videoqa"), cmd_videoqa, videoqa_flags,
            "  videopanda eval videoqa --dataset msvd --questions test_q.json --answers test_a.json \\\n"
            "      --video-dir videos/ --out runs/msvd\n"
            "  torchrun --nproc_per_node 8 -m videopanda.eval.commands videoqa ...   # sharded over 8 GPUs\n"),
    Command(("eval", "judge"), cmd_judge, judge_flags,
            "  videopanda eval judge --pred runs/msvd/predictions.jsonl --out runs/msvd_judged --dataset msvd\n"),
    Command(("eval", "vcgbench"), cmd_vcgbench, vcgbench_flags,
            "  videopanda eval vcgbench --generic generic_qa.json --temporal temporal_qa.json \\\n"
            "      --consistency consistency_qa.json --video-dir videos/ --out runs/vcg\n"),
)
EVAL_HELP = "evaluation: videoqa, judge, vcgbench"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m videopanda.eval.commands [-v] SUB ...` is `videopanda [-v] eval SUB ...` (kept for torchrun -m)."""
    rows = [dataclasses.replace(c, path=c.path[1:]) for c in COMMANDS]
    return run(build_parser(rows, prog="videopanda eval", description=EVAL_HELP), argv)


if __name__ == "__main__":
    sys.exit(main())
