"""Open-ended VideoQA inference (MSVD-QA, MSRVTT-QA, TGIF-QA, ActivityNet-QA, the synthetic set) and judge-free scores.

Inputs follow the reference (spec 6.1, the Video-ChatGPT format): ``test_q.json``, a list of ``{"video_name",
"question", "question_id", ...}``, and ``test_a.json``, a list aligned with it by index, each with ``"answer"``.
The output is JSONL, one ``{"id", "question", "answer", "pred"}`` line per answered question (plus ``family`` /
``type`` when the input has them), which is what the reference's GPT judge reads.

Differences from the reference's ``run_inference_video_qa.py``, all for speed or robustness:
- Batched greedy generation (left padding) instead of batch size 1; a batch gives the same answers as one by one.
- Each video is decoded once, however many questions ask about it (MSVD/MSRVTT have many per video), in worker
  threads that run ahead of generation, instead of once per question in the generating process; the next batch is
  also tokenised, stacked, cast to the model's dtype and pinned in a worker thread while the GPU answers this one.
- Resumable: a rerun skips the questions already in the output file, so a killed run loses at most one batch.
- A missing or undecodable video is reported (``failed`` in the summary, with the reason) instead of silently
  skipped; the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..engine import Engine
from ..processing import VideoPandaProcessor
from ..video import VideoDecodeError, load_video
from .metrics import summarize

__all__ = ["DATASETS", "QAItem", "find_video", "merge_and_score", "read_jsonl", "read_qa", "run_videoqa"]

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
# dataset -> (file name prefix, extensions in the order they are tried). The reference tries .mp4 .avi .mov .mkv;
# .webm and .gif are ours. TGIF-QA's videos are GIFs, distributed converted to mp4 (the reference reads the mp4 folder).
DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "msvd": ("", VIDEO_EXTENSIONS),
    "msrvtt": ("", VIDEO_EXTENSIONS),
    "tgif": ("", (".mp4", ".gif")),
    "activitynet": ("v_", VIDEO_EXTENSIONS),
    "synth": ("", VIDEO_EXTENSIONS),
    "vcgbench": ("", VIDEO_EXTENSIONS),  # Video-ChatGPT benchmark: ActivityNet videos, names as in the question files
}
KEPT_FIELDS = ("family", "type")  # extra input fields copied to the output lines (grouping keys for the scores)
_PREFETCH_BATCHES = 2  # batches whose videos are decoded ahead of the one being generated


@dataclass(frozen=True)
class QAItem:
    """One question about one video, with its reference answer.

    Attributes:
        question_id: unique within the set (str or int, as in the input file).
        video_name: the video's name without folder, prefix or extension.
        question: the question text.
        answer: the reference answer.
        extra: every other field of the question and answer entries (e.g. "family", "type").
    """

    question_id: str | int
    video_name: str
    question: str
    answer: str
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self, pred: str) -> dict[str, Any]:
        """The output line for this question: {"id", "question", "answer", "pred"} plus family/type if present."""
        out = {"id": self.question_id, "question": self.question, "answer": self.answer, "pred": pred}
        out.update({k: self.extra[k] for k in KEPT_FIELDS if k in self.extra})
        return out


# -- reading the question files ----------------------------------------------------------------------------------------
def load_json_list(path: Path) -> list[dict[str, Any]]:
    """A JSON file holding a list of objects, or one clear ValueError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry {i} is {type(entry).__name__}, not an object")
    return data


def _field(path: Path, i: int, entry: dict[str, Any], name: str) -> Any:
    if name not in entry or entry[name] is None:
        raise ValueError(f"{path}: entry {i} has no {name!r} field (it has {sorted(entry)})")
    return entry[name]


def read_qa(questions_path: str | os.PathLike, answers_path: str | os.PathLike) -> list[QAItem]:
    """Questions and answers of an MSVD/MSRVTT/TGIF/ActivityNet-QA style set, aligned by index.

    Args:
        questions_path: test_q.json, a list of {"video_name", "question", "question_id", ...}.
        answers_path: test_a.json, a list of {"answer", ...} in the same order.

    Returns:
        One QAItem per question, in file order; other fields of both entries are kept in `extra`.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: invalid JSON, not a list of objects, different lengths, a missing field, a question_id that is
            not a string or integer, differs between the two files at the same index, or occurs twice.
    """
    q_path, a_path = Path(questions_path), Path(answers_path)
    questions, answers = load_json_list(q_path), load_json_list(a_path)
    if len(questions) != len(answers):
        raise ValueError(
            f"{q_path} holds {len(questions)} questions but {a_path} holds {len(answers)} answers; "
            "the two files must be aligned by index"
        )
    items, seen = [], set()
    for i, (q, a) in enumerate(zip(questions, answers)):
        qid = _field(q_path, i, q, "question_id")
        if isinstance(qid, bool) or not isinstance(qid, (str, int)):
            raise ValueError(f"{q_path}: entry {i} has question_id {qid!r}; expected a string or an integer")
        if "question_id" in a and a["question_id"] != qid:
            raise ValueError(
                f"entry {i}: question_id {qid!r} in {q_path} but {a['question_id']!r} in {a_path}; "
                "the files are not aligned"
            )
        if qid in seen:
            raise ValueError(f"{q_path}: question_id {qid!r} occurs more than once (entry {i})")
        seen.add(qid)
        extra = {k: v for k, v in a.items() if k not in ("answer", "question_id")}
        extra.update({k: v for k, v in q.items() if k not in ("video_name", "question", "question_id")})
        items.append(
            QAItem(
                question_id=qid,
                video_name=str(_field(q_path, i, q, "video_name")),
                question=str(_field(q_path, i, q, "question")),
                answer=str(_field(a_path, i, a, "answer")),
                extra=extra,
            )
        )
    return items


def find_video(video_dir: str | os.PathLike, video_name: str, dataset: str = "msvd") -> Path | None:
    """The file of `video_name` in `video_dir`, or None.

    Tries `{prefix}{video_name}{ext}` for the dataset's prefix ("v_" for ActivityNet) and extensions in order
    (.mp4 .avi .mov .mkv .webm .gif; .mp4 .gif for TGIF), then the same without the prefix when the name already
    carries it, and the name as is when it already ends with one of the extensions.

    Raises:
        ValueError: unknown dataset.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    prefix, extensions = DATASETS[dataset]
    folder = Path(video_dir)
    stems = [prefix + video_name] + ([video_name] if prefix and video_name.startswith(prefix) else [])
    candidates = [folder / (stem + ext) for stem in stems for ext in extensions]
    if Path(video_name).suffix.lower() in extensions:
        candidates.insert(0, folder / video_name)
    return next((path for path in candidates if path.is_file()), None)


# -- the output file ---------------------------------------------------------------------------------------------------
def read_jsonl(path: str | os.PathLike, *, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a JSONL prediction file.

    A last line without its newline is what a killed writer leaves: it is ignored, and with `repair` cut off the
    file so that appending continues on a clean line. Any other line that is not a JSON object with an "id" is an
    error.

    Raises:
        ValueError: a complete line is not a JSON object with an "id".
    """
    path = Path(path)
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]  # everything up to the last newline
    if repair and len(complete) != len(data):
        logger.warning(
            "%s: dropping an incomplete last line (%d bytes) left by an interrupted run",
            path,
            len(data) - len(complete),
        )
        with path.open("r+b") as f:
            f.truncate(len(complete))
    records = []
    for lineno, line in enumerate(complete.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not a JSON line ({err}); remove the line or the file") from None
        if not isinstance(record, dict) or "id" not in record:
            raise ValueError(f"{path}:{lineno}: expected a JSON object with an 'id', got {line[:80]!r}")
        records.append(record)
    return records


def _read_done(out_path: Path, items: Sequence[QAItem]) -> tuple[dict[str | int, dict[str, Any]], int]:
    """Records already in `out_path` (repairing a torn last line) by id, and the number of lines they came from;
    they must all belong to `items`."""
    if not out_path.exists():
        return {}, 0
    wanted = {item.question_id for item in items}
    done: dict[str | int, dict[str, Any]] = {}
    lines = read_jsonl(out_path, repair=True)
    for record in lines:
        if record["id"] not in wanted:
            raise ValueError(
                f"{out_path} holds an answer to question {record['id']!r}, which is not in this question set; "
                "is it the output of another run? Use another output path or delete the file"
            )
        done.setdefault(record["id"], record)
    return done, len(lines)


def _write_in_order(out_path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Atomically replace `out_path` with `records`, one JSON line each."""
    tmp = out_path.with_name(out_path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    os.replace(tmp, out_path)


# -- decoding ahead of generation --------------------------------------------------------------------------------------
@dataclass
class _Visual:
    """A decoded video ([T, 4, S, S] pixel values) or why there is none."""

    pixel_values: torch.Tensor | None = None
    error: str | None = None


def _decode(video_dir: Path, video_name: str, dataset: str, processor: VideoPandaProcessor, num_frames: int) -> _Visual:
    path = find_video(video_dir, video_name, dataset)
    if path is None:
        return _Visual(error=f"video not found in {video_dir} (dataset {dataset!r})")
    try:
        return _Visual(pixel_values=processor.preprocess(load_video(path, num_frames)))
    except VideoDecodeError as err:
        return _Visual(error=str(err))


def _batches(items: Sequence[QAItem], batch_size: int) -> list[list[QAItem]]:
    """Batches with each video's questions next to each other (first appearance order), so a video is decoded once
    and its frames are dropped as soon as its last question is answered."""
    by_video: dict[str, list[QAItem]] = {}
    for item in items:
        by_video.setdefault(item.video_name, []).append(item)
    ordered = [item for group in by_video.values() for item in group]
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


@dataclass
class _Batch:
    """One batch ready for generation: the questions whose video decoded, with their model inputs (on the CPU,
    pixel values already in the model's dtype, pinned for an asynchronous copy when the model is on a GPU), and
    the questions that failed."""

    items: list[QAItem]
    inputs: dict[str, Any] | None
    failed: list[dict[str, Any]]


def _collate(processor: VideoPandaProcessor, batch: list[QAItem], visuals: list[_Visual], dtype: torch.dtype | None,
             pin: bool) -> _Batch:
    """Tokenise a batch (left padding) and stack its pixel values; runs in a worker thread ahead of generation."""
    ok = [(item, v) for item, v in zip(batch, visuals) if v.error is None]
    failed = [{"id": item.question_id, "video_name": item.video_name, "reason": v.error}
              for item, v in zip(batch, visuals) if v.error is not None]
    if not ok:
        return _Batch([], None, failed)
    inputs = dict(processor(videos=[v.pixel_values for _, v in ok], text=[item.question for item, _ in ok]))
    pixels = inputs["pixel_values"]
    pixels = [pixels] if isinstance(pixels, torch.Tensor) else pixels
    if dtype is not None:
        pixels = [p.to(dtype) for p in pixels]
    if pin:
        pixels = [p.pin_memory() for p in pixels]
    inputs["pixel_values"] = pixels[0] if isinstance(inputs["pixel_values"], torch.Tensor) else pixels
    return _Batch([item for item, _ in ok], inputs, failed)


class _Prefetcher:
    """Runs ahead of generation in worker threads: decodes the videos of the next batches (each video once, held
    until its last question is done) and collates the next batch (tokenise, stack, cast, pin)."""

    def __init__(self, batches: list[list[QAItem]], decode: Callable[[str], _Visual],
                 collate: Callable[[list[QAItem], list[_Visual]], _Batch], num_workers: int) -> None:
        self.batches, self.decode, self.collate = batches, decode, collate
        self.pool = ThreadPoolExecutor(num_workers, thread_name_prefix="videoqa-decode") if num_workers > 0 else None
        # A separate thread for collation: it waits on decode futures, so it must not take a decode worker's place.
        self.collator = ThreadPoolExecutor(1, thread_name_prefix="videoqa-collate") if num_workers > 0 else None
        self.futures: dict[str, Future[_Visual]] = {}
        self.collated: dict[int, Future[_Batch]] = {}
        self.remaining = Counter(item.video_name for batch in batches for item in batch)
        self.submitted = 0  # batches whose videos are submitted

    def _submit_until(self, end: int) -> None:
        for batch in self.batches[self.submitted : end]:
            for name in dict.fromkeys(item.video_name for item in batch):
                if name not in self.futures:
                    if self.pool is not None:
                        self.futures[name] = self.pool.submit(self.decode, name)
                    else:
                        self.futures[name] = Future()
                        self.futures[name].set_result(self.decode(name))
        self.submitted = max(self.submitted, end)

    def _collate(self, index: int) -> _Batch:
        batch = self.batches[index]
        return self.collate(batch, [self.futures[item.video_name].result() for item in batch])

    def _submit_collate(self, index: int) -> None:
        if index < len(self.batches) and index not in self.collated:
            if self.collator is None:
                self.collated[index] = Future()
                self.collated[index].set_result(self._collate(index))
            else:
                futures = [self.futures[item.video_name] for item in self.batches[index]]  # taken now: safe to release
                batch = self.batches[index]
                self.collated[index] = self.collator.submit(
                    lambda: self.collate(batch, [f.result() for f in futures]))

    def get(self, index: int) -> _Batch:
        """Batch `index`, collated; starts decoding the next batches and collating the next one."""
        if self.pool is None:
            self._submit_until(index + 1)
            self._submit_collate(index)
        else:
            self._submit_until(index + 1 + _PREFETCH_BATCHES)
            self._submit_collate(index)
            self._submit_collate(index + 1)
        return self.collated.pop(index).result()

    def release(self, index: int) -> None:
        for item in self.batches[index]:
            self.remaining[item.video_name] -= 1
            if self.remaining[item.video_name] == 0:
                del self.futures[item.video_name]

    def close(self) -> None:
        for pool in (self.collator, self.pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


# -- inference ---------------------------------------------------------------------------------------------------------
def _generate(engine: Engine, processor: VideoPandaProcessor, inputs: dict[str, Any], max_new_tokens: int,
              decoding: str, min_new_tokens: int = 0) -> list[str]:
    """Greedy answers to one collated batch (left-padded prompts, one video each); only new tokens are decoded."""
    prompt_len = inputs["input_ids"].shape[1]
    out = engine.generate(inputs, max_new_tokens=max_new_tokens, decoding=decoding, min_new_tokens=min_new_tokens,
                          pad_token_id=processor.tokenizer.pad_token_id)
    return processor.batch_decode(out[:, prompt_len:])


def run_videoqa(
    engine: Engine,
    processor: VideoPandaProcessor,
    items: Sequence[QAItem],
    video_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    dataset: str = "msvd",
    batch_size: int = 8,
    max_new_tokens: int = 32,
    num_frames: int | None = None,
    num_workers: int = 2,
    progress: bool = True,
    decoding: str = "auto",
) -> dict[str, Any]:
    """Answer every question with greedy decoding and write the answers to `out_path` as JSONL, resumably.

    Lines are appended and flushed after each batch; a rerun with the same `out_path` skips the questions already
    there (an incomplete last line left by a kill is dropped and answered again). Questions are batched by video;
    when that or a resume leaves the file out of order, it is rewritten in the order of `items` at the end, so the
    final file is the same as an uninterrupted run's.

    Args:
        engine: the loaded model (`Engine`).
        processor: its VideoPandaProcessor (`engine.processor`).
        items: the questions (see `read_qa`); question ids must be unique.
        video_dir: folder of the videos.
        out_path: the JSONL file, created or resumed.
        dataset: naming of the video files (see `find_video` and `DATASETS`).
        batch_size: questions generated together.
        max_new_tokens: answer length limit.
        num_frames: frames sampled per video; the model's `num_frames` by default.
        num_workers: threads decoding videos ahead of generation (plus one collating the next batch); 0 does
            everything in the calling thread.
        progress: show a tqdm bar.
        decoding: "auto", "dynamic", "static" or "compiled" (`Engine.generate`; "compiled" is `--compile`: each
            new batch size compiles once).

    Returns:
        {"total", "done" (answered now), "skipped_existing" (already in the file), "num_failed", "failed" (a list of
        {"id", "video_name", "reason"} for questions whose video is missing or undecodable; they are not written and
        are retried by a rerun), "seconds", "answers_per_second", "out_path"}.

    Raises:
        ValueError: bad arguments, duplicate question ids, or an `out_path` holding lines that are not this run's.
    """
    if batch_size < 1 or max_new_tokens < 1 or num_workers < 0:
        raise ValueError(
            f"need batch_size >= 1, max_new_tokens >= 1 and num_workers >= 0; got {batch_size}, {max_new_tokens}, "
            f"{num_workers}"
        )
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    video_dir, out_path = Path(video_dir), Path(out_path)
    if not video_dir.is_dir():
        raise FileNotFoundError(f"{video_dir}: no such video folder")
    duplicates = [qid for qid, n in Counter(item.question_id for item in items).items() if n > 1]
    if duplicates:
        raise ValueError(f"question ids must be unique; repeated: {duplicates[:5]}")
    start = time.perf_counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done, lines_before = _read_done(out_path, items)
    skipped = len(done)
    pending = [item for item in items if item.question_id not in done]
    batches = _batches(pending, batch_size)
    frames = num_frames or processor.config.num_frames
    cast = engine.model.dtype
    cast = cast if cast != torch.float32 else None  # float32 = the processor's
    pin = engine.device.type == "cuda"
    prefetch = _Prefetcher(
        batches,
        lambda name: _decode(video_dir, name, dataset, processor, frames),
        lambda batch, visuals: _collate(processor, batch, visuals, cast, pin),
        num_workers,
    )
    failed: list[dict[str, Any]] = []
    bar = tqdm(total=len(items), initial=skipped, disable=not progress, desc="videoqa", unit="q")
    try:
        with out_path.open("a", encoding="utf-8") as out:
            for index in range(len(batches)):
                ready = prefetch.get(index)
                failed.extend(ready.failed)
                if ready.items:
                    preds = _generate(engine, processor, ready.inputs, max_new_tokens, decoding)
                    records = [item.record(pred) for item, pred in zip(ready.items, preds)]
                    out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                    out.flush()
                    done.update((r["id"], r) for r in records)
                prefetch.release(index)
                bar.update(len(batches[index]))
                bar.set_postfix(failed=len(failed), refresh=False)
    finally:
        bar.close()
        prefetch.close()
    _log_failures(failed)
    in_order = [done[item.question_id] for item in items if item.question_id in done]
    # `done` keeps insertion order, i.e. the file's order, unless the file repeated an id (then it has more lines).
    if [r["id"] for r in in_order] != list(done) or lines_before > skipped:
        _write_in_order(out_path, in_order)
    seconds = time.perf_counter() - start
    answered = len(done) - skipped
    return {
        "total": len(items),
        "done": answered,
        "skipped_existing": skipped,
        "num_failed": len(failed),
        "failed": failed,
        "seconds": round(seconds, 3),
        "answers_per_second": round(answered / seconds, 3) if seconds > 0 else 0.0,
        "out_path": str(out_path),
    }


def _log_failures(failed: list[dict[str, Any]]) -> None:
    reasons = {f["video_name"]: f["reason"] for f in failed}  # one line per video, not per question
    for name, reason in reasons.items():
        logger.warning("video %s skipped: %s", name, reason)
    if failed:
        logger.warning("%d questions about %d videos were not answered", len(failed), len(reasons))


# -- scoring -----------------------------------------------------------------------------------------------------------
def merge_and_score(
    pred_paths: str | os.PathLike | Iterable[str | os.PathLike],
    items: Sequence[QAItem] | None = None,
    *,
    key: str | None = "family",
    merged_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Merge prediction files (one per chunk or a single one) and score them with the judge-free metrics.

    Args:
        pred_paths: JSONL files written by `run_videoqa`.
        items: the question set; when given, its answers and family/type are used (not those in the files), and
            questions without a prediction are counted as missing. Without it, the files' own answers are scored.
        key: the field to group scores by ("family" for the synthetic set, "type" where a set has one).
        merged_path: if given, the merged predictions are written there (in the order of `items` when given).

    Returns:
        `metrics.summarize` of the predictions, plus "missing" (questions without a prediction) and "unexpected"
        (predictions for questions not in `items`).

    Raises:
        ValueError: an id is predicted twice with different answers, or a line is malformed.
    """
    paths = [pred_paths] if isinstance(pred_paths, (str, os.PathLike)) else list(pred_paths)
    preds: dict[str | int, dict[str, Any]] = {}
    for path in paths:
        for record in read_jsonl(path):
            previous = preds.setdefault(record["id"], record)
            if previous.get("pred") != record.get("pred"):
                raise ValueError(f"question {record['id']!r} has two different predictions ({path})")
    missing = unexpected = 0
    if items is None:
        records = list(preds.values())
    else:
        known = {item.question_id for item in items}
        unexpected = sum(1 for qid in preds if qid not in known)
        records = [
            item.record(str(preds[item.question_id].get("pred", ""))) for item in items if item.question_id in preds
        ]
        missing = len(items) - len(records)
    if merged_path is not None:
        Path(merged_path).parent.mkdir(parents=True, exist_ok=True)
        _write_in_order(Path(merged_path), records)
    return {**summarize(records, key=key), "missing": missing, "unexpected": unexpected}
