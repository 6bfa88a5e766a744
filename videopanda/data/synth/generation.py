"""`generate`: a whole dataset on disk (videos, LLaVA-style train/val JSON, MSVD-QA-style test JSON, meta.json).
Each clip is drawn from its own seed, so the output does not depend on the number of workers, and videos
already written with the same parameters are reused."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .questions import make_questions
from .render import render_scene
from .sampling import _check_clip_args, sample_scene
from .scene import FAMILIES, SYNTH_VERSION
from .writing import _pick_codec, _video_ok, _write_json, write_video

__all__ = ["generate"]

_VIDEO_DIR = "videos"
_PARAMS_FILE = ".synth_params.json"


def _check_args(n: int, seed: int, workers: int, splits: tuple[float, float, float]) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if len(splits) != 3 or min(splits) < 0 or splits[0] <= 0 or abs(sum(splits) - 1.0) > 1e-6:
        raise ValueError(f"splits must be 3 non-negative fractions (train > 0) summing to 1, got {splits}")


def _clip_name(k: int) -> str:
    return f"synth_{k:06d}"


def _make_clip(job: tuple[int, int, dict[str, int], str, bool]) -> tuple[list[dict[str, str]], bool]:
    """Worker: samples clip k from rng (seed, k) and renders it unless a valid copy exists.

    Returns:
        (questions, rendered): rendered is False when an existing video was reused.
    """
    k, seed, clip_args, out_dir, reuse = job
    rng = np.random.default_rng([seed, k])
    scene = sample_scene(rng, **clip_args)
    questions = make_questions(scene, rng)
    path = Path(out_dir) / _VIDEO_DIR / f"{_clip_name(k)}.mp4"
    if reuse and _video_ok(path, scene.num_frames, scene.size):
        return questions, False
    write_video(render_scene(scene), path, scene.fps)
    return questions, True


def _split_of(n: int, seed: int, splits: tuple[float, float, float]) -> list[str]:
    """Split name per clip: exact counts from the fractions, assignment from a seed-fixed permutation.

    Val and test get at least one clip each when their fraction is positive and n leaves room for it.
    """
    sizes = [0, 0]
    for i, frac in enumerate(splits[1:]):
        sizes[i] = int(round(n * frac))
        if frac > 0 and sizes[i] == 0 and n - sum(sizes) > 1:
            sizes[i] = 1
    order = np.random.default_rng([seed, n, 0x5917]).permutation(n)
    names = ["train"] * n
    for k in order[: sizes[0]]:
        names[int(k)] = "val"
    for k in order[sizes[0] : sizes[0] + sizes[1]]:
        names[int(k)] = "test"
    return names


def _train_items(k: int, questions: list[dict[str, str]]) -> list[dict[str, Any]]:
    """LLaVA / Video-LLaVA single-turn items for one train or val clip."""
    name = _clip_name(k)
    return [
        {
            "id": f"{name}_{j}",
            "video": f"{_VIDEO_DIR}/{name}.mp4",
            "family": q["family"],
            "conversations": [
                {"from": "human", "value": "<video>\n" + q["question"]},
                {"from": "gpt", "value": q["answer"]},
            ],
        }
        for j, q in enumerate(questions)
    ]


def _test_items(k: int, questions: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """MSVD-QA style (question, answer) lists for one test clip, aligned by index and question_id."""
    name = _clip_name(k)
    qs = [
        {"video_name": name, "question": q["question"], "question_id": f"{name}_{j}", "family": q["family"]}
        for j, q in enumerate(questions)
    ]
    answers = [
        {"answer": q["answer"], "question_id": f"{name}_{j}", "family": q["family"]} for j, q in enumerate(questions)
    ]
    return qs, answers


def _run_jobs(jobs: list[tuple], workers: int, progress: bool) -> list[tuple[list[dict[str, str]], bool]]:
    """Runs _make_clip over jobs in order, in a spawn pool when workers > 1 (safe even if torch is loaded)."""
    bar = tqdm(total=len(jobs), disable=not progress, desc="synth", unit="clip")
    results = []
    if workers == 1:
        for job in jobs:
            results.append(_make_clip(job))
            bar.update()
    else:
        chunksize = max(1, min(32, len(jobs) // (workers * 8)))
        # concurrent.futures, not multiprocessing.Pool: a worker that dies (e.g. while re-importing an unguarded main
        # script) breaks the executor with an error, where a Pool starts a new worker forever and the call hangs.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                for result in pool.map(_make_clip, jobs, chunksize=chunksize):
                    results.append(result)
                    bar.update()
            except BrokenProcessPool as err:
                raise RuntimeError(f"a synth worker process died ({err}). If generate(..., workers > 1) is called at "
                                   'the top level of a script, put the call under `if __name__ == "__main__":` (the '
                                   "workers are spawned and re-import the main script)") from None
    bar.close()
    return results


def _prepare_out(out: Path, params: dict[str, Any]) -> bool:
    """Creates the output folders; returns whether existing videos may be reused (same clip parameters)."""
    (out / _VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    params_path = out / _VIDEO_DIR / _PARAMS_FILE
    reuse = params_path.is_file() and json.loads(params_path.read_text(encoding="utf-8")) == params
    _write_json(params_path, params)
    return reuse


def _meta(
    results: list[tuple[list[dict[str, str]], bool]],
    split_names: list[str],
    params: dict[str, Any],
    n: int,
    splits: tuple[float, float, float],
) -> dict[str, Any]:
    """meta.json content: parameters and counts only (nothing run-dependent, so it is byte-identical too)."""
    clips, questions = Counter(split_names), Counter()
    families: dict[str, Counter] = {s: Counter() for s in ("train", "val", "test")}
    answers: dict[str, Counter] = {f: Counter() for f in FAMILIES if f != "caption"}
    for (qs, _), split in zip(results, split_names):
        questions[split] += len(qs)
        for q in qs:
            families[split][q["family"]] += 1
            if q["family"] in answers:
                answers[q["family"]][q["answer"]] += 1
    return {
        "generator": "videopanda.data.synth",
        **params,
        "n": n,
        "splits": list(splits),
        "families_order": list(FAMILIES),
        "clips": {s: clips[s] for s in families},
        "questions": {s: questions[s] for s in families},
        "families": {s: {f: families[s][f] for f in FAMILIES} for s in families},
        "answers": {f: dict(sorted(c.items())) for f, c in answers.items()},
    }


def generate(
    out_dir: str | os.PathLike,
    n: int,
    seed: int = 0,
    *,
    num_frames: int = 16,
    size: int = 128,
    fps: int = 8,
    workers: int = 1,
    splits: tuple[float, float, float] = (0.9, 0.05, 0.05),
    progress: bool = True,
) -> dict[str, Any]:
    """Writes a synthetic video-QA dataset: videos/, train.json, val.json, test_q.json, test_a.json, meta.json.

    Re-running with the same seed and clip parameters reuses the videos already written (resume); the JSON is
    always rewritten, byte-identically, from the deterministic scenes.

    With workers > 1 the clips are made in a "spawn" pool (safe when torch is already loaded), so a script that
    calls this at import time needs the usual ``if __name__ == "__main__":`` guard.

    Args:
        out_dir: Output folder, created if needed.
        n: Number of clips (each yields 4 to 7 single-turn questions).
        seed: Fixes the scenes, questions and split assignment.
        num_frames: Frames per clip, >= 2.
        size: Frame height and width, a multiple of 16 and >= 32.
        fps: Frame rate of the written videos.
        workers: Processes rendering and encoding clips; the output does not depend on it.
        splits: Fractions of clips for (train, val, test).
        progress: Shows a tqdm bar.

    Returns:
        Summary: out_dir, n, seed, clips and questions per split, questions per family, rendered and reused
        video counts, and the elapsed seconds.
    """
    _check_clip_args(num_frames=num_frames, size=size, fps=fps)
    _check_args(n, seed, workers, splits)
    started, out = time.perf_counter(), Path(out_dir)
    clip_args = {"num_frames": num_frames, "size": size, "fps": fps}
    params = {"version": SYNTH_VERSION, "seed": seed, **clip_args, "codec": _pick_codec()}
    reuse = _prepare_out(out, params)
    jobs = [(k, seed, clip_args, str(out), reuse) for k in range(n)]
    results = _run_jobs(jobs, workers, progress)

    split_names = _split_of(n, seed, tuple(splits))
    items: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test_q": [], "test_a": []}
    for k, ((questions, _), split) in enumerate(zip(results, split_names)):
        if split == "test":
            test_q, test_a = _test_items(k, questions)
            items["test_q"] += test_q
            items["test_a"] += test_a
        else:
            items[split] += _train_items(k, questions)
    for name, content in items.items():
        _write_json(out / f"{name}.json", content)

    meta = _meta(results, split_names, params, n, tuple(splits))
    _write_json(out / "meta.json", meta)
    rendered = sum(r for _, r in results)
    return {
        "out_dir": str(out),
        "n": n,
        "seed": seed,
        "clips": meta["clips"],
        "questions": meta["questions"],
        "families": meta["families"],
        "rendered": rendered,
        "reused": n - rendered,
        "seconds": round(time.perf_counter() - started, 2),
    }
