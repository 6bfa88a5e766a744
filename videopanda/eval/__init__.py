"""Evaluation: VideoQA inference over MSVD/MSRVTT/TGIF/ActivityNet-style question files, and judge-free scores."""

from .metrics import contains_match, exact_match, normalize, summarize, token_f1
from .videoqa import DATASETS, QAItem, find_video, merge_and_score, read_jsonl, read_qa, run_videoqa

__all__ = [
    "DATASETS",
    "QAItem",
    "contains_match",
    "exact_match",
    "find_video",
    "merge_and_score",
    "normalize",
    "read_jsonl",
    "read_qa",
    "run_videoqa",
    "summarize",
    "token_f1",
]
