"""LLM judges: grade a predicted answer against the reference answer, as the Video-ChatGPT protocol does (spec 6.2).

A `Rubric` is one grading prompt (system + user template over named fields) and the reply it asks for: a verdict
and a score (`{"pred": "yes"|"no", "score": 0-5}`, open-ended VideoQA) or a score only (the five aspects of the
Video-ChatGPT benchmark, see vcgbench.py). A `Judge` runs rubrics:

- `OpenAIJudge`: any OpenAI-compatible chat-completions endpoint (OpenAI, Azure-style proxies, vLLM, llama.cpp
  server ...) through the official `openai` client (`pip install 'videopanda[eval]'`), many requests in flight.
- `LocalJudge`: any transformers causal LM, offline, batched greedy decoding with the model's chat template.

Both cache their judgments on disk (`JudgmentCache`), keyed by a hash of everything that determines a judgment:
judge kind and model, rubric name and version, temperature, and the rendered prompt (question, answer, prediction).
A rerun, or a report rebuilt after a crash, asks the judge only what it has not answered yet.

Replies are parsed without `eval`: a JSON object, then a Python-dict literal (`ast.literal_eval`), then "yes"/"no"
and a number anywhere in the text. Scores are truncated to integers (as the reference's `int(score)`) and clamped to
0-5. A reply that still cannot be read is retried (API judge) and finally counted as "unparsed", never a crash; an
API error that persists through the retries is counted as "failed".

Deviations from the reference (`eval_video_qa.py`, gpt-3.5-turbo through openai 0.27):
- Temperature 0 by default (the reference sends none, so the API default of 1 applied, although its output folders
  are named as if it were 0); `temperature=None` reproduces the reference.
- Our own prompt wording with the same semantics, asking for JSON with an integer score (the reference's example
  shows a float score that its parser then truncates).
- Unparseable replies and API errors are counted and reported instead of being retried forever.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "QA_RUBRIC",
    "Judge",
    "JudgeError",
    "Judgment",
    "JudgmentCache",
    "LocalJudge",
    "OpenAIJudge",
    "Rubric",
    "aggregate",
    "judge_qa",
    "parse_reply",
]

logger = logging.getLogger(__name__)

DEFAULT_OPENAI_MODEL = "gpt-3.5-turbo"  # the reference's judge (no snapshot pinned there); pin one for new results
MAX_SCORE = 5
_MAX_BACKOFF_S = 60.0


class JudgeError(ValueError):
    """The judge cannot work at all (bad key, unknown model, missing package); no point in going on."""


# -- rubrics and reply parsing -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rubric:
    """One grading prompt.

    Attributes:
        name: short name ("qa", "correctness", ...); part of the cache key and of every result.
        version: bumped whenever the wording changes; part of the cache key and of every result.
        system: the system message.
        user: the user message, a `str.format` template over `fields`.
        fields: the names the user template needs (e.g. question, answer, pred).
        verdict: whether the reply carries a yes/no verdict besides the score.
    """

    name: str
    version: str
    system: str
    user: str
    fields: tuple[str, ...]
    verdict: bool = False

    @property
    def prompt_version(self) -> str:
        return f"{self.name}-{self.version}"

    def messages(self, values: Mapping[str, Any]) -> list[dict[str, str]]:
        """Chat messages for one item; values are inserted as text, never interpreted as a template."""
        missing = [f for f in self.fields if f not in values]
        if missing:
            raise ValueError(f"rubric {self.name!r} needs {list(self.fields)}; missing {missing}")
        user = self.user.format(**{f: str(values[f]).strip() for f in self.fields})
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def parse(self, reply: str) -> tuple[str | None, int] | None:
        return parse_reply(reply, verdict=self.verdict)


QA_RUBRIC = Rubric(
    name="qa",
    version="v1",
    system=(
        "You grade answers to questions about videos. For each question you see the correct answer and a predicted "
        "answer, and you decide whether the prediction means the same as the correct answer. Judge the meaning, not "
        "the wording: synonyms and paraphrases of the correct answer count as a match."
    ),
    user=(
        "Question: {question}\n"
        "Correct answer: {answer}\n"
        "Predicted answer: {pred}\n\n"
        'Reply with one JSON object and nothing else, like {{"pred": "no", "score": 1}}. "pred" is "yes" when the '
        'prediction matches the correct answer and "no" when it does not; "score" is an integer from 0 (no match at '
        "all) to 5 (a perfect match) saying how well it matches."
    ),
    fields=("question", "answer", "pred"),
    verdict=True,
)

_OBJECT = re.compile(r"\{[^{}]{0,2000}\}", re.S)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_SCORE_AFTER_KEY = re.compile(r"score\W{0,6}?(-?\d+(?:\.\d+)?)", re.I)
_WORD = re.compile(r"[a-z]+")
_VERDICTS = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}


def _as_mapping(text: str) -> dict[str, Any] | None:
    """The first {...} in `text` that reads as a JSON object or a Python dict literal, keys lowercased."""
    for match in _OBJECT.finditer(text):
        chunk = match.group(0)
        for load in (json.loads, ast.literal_eval):  # literal_eval evaluates literals only, never code
            try:
                value = load(chunk)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(value, dict):
                return {str(k).strip().lower(): v for k, v in value.items()}
    return None


def _verdict(value: Any) -> str | None:
    """"yes"/"no" from a value such as "Yes", "no.", True; the first of the words that occurs wins."""
    for word in _WORD.findall(str(value).lower()):
        if word in _VERDICTS:
            return _VERDICTS[word]
    return None


def _score(value: Any) -> int | None:
    """An integer score in [0, 5]: numbers are truncated (as the reference's int()) and clamped."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        match = _NUMBER.search(value)
        if match is None:
            return None
        value = float(match.group(0))
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return min(MAX_SCORE, max(0, int(value)))


def parse_reply(reply: str | None, *, verdict: bool) -> tuple[str | None, int] | None:
    """(verdict, score) from a judge's reply, or None when it cannot be read.

    Tries a JSON object, then a Python dict literal ({'pred': 'yes', 'score': 4.8}), then free text: "yes"/"no" as
    a word (the first one) and the number after "score", else the first number. With `verdict=False` only the
    score is needed and the returned verdict is None.
    """
    if not reply:
        return None
    mapping = _as_mapping(reply) or {}
    score = _score(mapping["score"]) if "score" in mapping else None
    if score is None:
        after_key = _SCORE_AFTER_KEY.search(reply)
        score = _score(after_key.group(1) if after_key else reply)
    if not verdict:
        return (None, score) if score is not None else None
    said = _verdict(mapping["pred"]) if "pred" in mapping else None
    said = said or _verdict(reply)
    return (said, score) if said is not None and score is not None else None


# -- judgments and their cache -----------------------------------------------------------------------------------------
@dataclass
class Judgment:
    """The outcome of grading one item.

    Attributes:
        status: "ok" (parsed), "unparsed" (replies came but none could be read), "failed" (no reply: API errors).
        verdict: "yes" / "no" for verdict rubrics, else None.
        score: 0-5 when ok.
        reply: the judge's last raw reply.
        error: why it is not ok.
        attempts: requests made (0 when it came from the cache).
        cached: read from the cache.
    """

    status: str
    verdict: str | None = None
    score: int | None = None
    reply: str | None = None
    error: str | None = None
    attempts: int = 0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class JudgmentCache:
    """Judgments on disk, one JSONL file (`judgments.jsonl` in `folder`), a line per judgment appended as it comes.

    Only parsed judgments are stored, so a rerun asks again about the unparsed and failed ones. A torn or foreign
    line (a killed writer) is skipped. Safe for the threads of one process.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / "judgments.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        skipped = 0
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self._entries[entry["key"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    skipped += 1
        if skipped:
            logger.warning("%s: skipped %d unreadable lines", self.path, skipped)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Judgment | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        return Judgment("ok", entry.get("verdict"), entry["score"], entry.get("reply"), cached=True)

    def put(self, key: str, judgment: Judgment) -> None:
        if not judgment.ok:
            return
        entry = {"key": key, "verdict": judgment.verdict, "score": judgment.score, "reply": judgment.reply}
        with self._lock:
            self._entries[key] = entry
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")


# -- judges ------------------------------------------------------------------------------------------------------------
class Judge(ABC):
    """Grades items with rubrics; subclasses say how a batch of prompts becomes replies (`_run`)."""

    kind: ClassVar[str]

    def __init__(self, model: str, *, temperature: float | None, cache_dir: str | os.PathLike | None) -> None:
        self.model = model
        self.temperature = temperature
        self.cache = JudgmentCache(cache_dir) if cache_dir is not None else None

    def describe(self) -> dict[str, Any]:
        """What produced the judgments: recorded with every result."""
        return {"judge": self.kind, "judge_model": self.model, "temperature": self.temperature}

    def cache_key(self, rubric: Rubric, messages: list[dict[str, str]]) -> str:
        identity = {**self.describe(), "rubric": rubric.prompt_version, "messages": messages}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def judge(self, rubric: Rubric, rows: Sequence[Mapping[str, Any]], *, progress: bool = False) -> list[Judgment]:
        """One judgment per row (a mapping with the rubric's fields), in order; cached ones are not asked again,
        and identical prompts are asked once."""
        from tqdm.auto import tqdm  # here, not at import: the CLI registers the eval commands at start-up

        prompts = [rubric.messages(row) for row in rows]
        keys = [self.cache_key(rubric, p) for p in prompts]
        found = {k: self.cache.get(k) for k in set(keys)} if self.cache is not None else {}
        todo = list(dict.fromkeys(k for k in keys if found.get(k) is None))
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        with tqdm(total=len(todo), disable=not progress, desc=f"judge {rubric.name}", unit="q") as bar:
            for index, judgment in self._run(rubric, [prompts[first[k]] for k in todo]):
                found[todo[index]] = judgment
                if self.cache is not None:
                    self.cache.put(todo[index], judgment)
                bar.update(1)
        return [found[k] for k in keys]

    @abstractmethod
    def _run(self, rubric: Rubric, prompts: list[list[dict[str, str]]]) -> Iterator[tuple[int, Judgment]]:
        """(index into `prompts`, judgment) for every prompt, in any order."""


class OpenAIJudge(Judge):
    """A judge behind an OpenAI-compatible `/v1/chat/completions` endpoint.

    Args:
        base_url: the API root (".../v1"); $OPENAI_BASE_URL, else OpenAI's.
        model: the judge model; $VIDEOPANDA_JUDGE_MODEL, else "gpt-3.5-turbo" (the reference's).
        api_key: $OPENAI_API_KEY; required for OpenAI's own endpoint, "EMPTY" is sent to another one without a key.
        cache_dir: folder of the judgment cache; None: no cache.
        max_retries: extra attempts after an API error (429, 5xx, timeout, connection) or an unparseable reply.
        timeout: seconds per request.
        temperature: 0 by default; None sends no temperature (the API default, as the reference).
        workers: requests in flight.
        backoff: seconds before the first retry, doubled at each further one (at most 60).

    Raises:
        JudgeError: the `openai` package is missing, or no key for OpenAI's endpoint.
    """

    kind = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        max_retries: int = 4,
        timeout: float = 60.0,
        *,
        temperature: float | None = 0.0,
        workers: int = 8,
        backoff: float = 1.0,
    ) -> None:
        try:
            import openai
        except ImportError:
            raise JudgeError("the API judge needs the openai package: pip install 'videopanda[eval]'") from None
        if max_retries < 0 or workers < 1 or timeout <= 0 or backoff < 0:
            raise ValueError(f"need max_retries >= 0, workers >= 1, timeout > 0, backoff >= 0; got {max_retries}, "
                             f"{workers}, {timeout}, {backoff}")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        if api_key is None and base_url is None:
            raise JudgeError("no API key for the OpenAI judge: pass --api-key or set OPENAI_API_KEY (or point "
                             "--base-url / OPENAI_BASE_URL at another OpenAI-compatible server)")
        super().__init__(model or os.environ.get("VIDEOPANDA_JUDGE_MODEL") or DEFAULT_OPENAI_MODEL,
                         temperature=temperature, cache_dir=cache_dir)
        self.base_url, self.max_retries, self.workers, self.backoff = base_url, max_retries, workers, backoff
        # The client's own retries are off: ours count attempts and also retry unparseable replies.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=0)
        self._openai = openai

    def _complete(self, messages: list[dict[str, str]]) -> str:
        extra = {} if self.temperature is None else {"temperature": self.temperature}
        response = self.client.chat.completions.create(model=self.model, messages=messages, **extra)
        choices = getattr(response, "choices", None)  # a 200 with an HTML or text body comes back as a str
        if not isinstance(choices, list):
            raise ValueError(f"the reply is not a chat completion: {str(response)[:80]!r}")
        if not choices:
            return ""
        return choices[0].message.content or ""

    def judge_one(self, rubric: Rubric, messages: list[dict[str, str]]) -> Judgment:
        """Ask until a reply parses, at most 1 + max_retries times, waiting backoff * 2^k seconds between tries."""
        errors = self._openai
        reply, error, connection_only = None, None, False
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(_MAX_BACKOFF_S, self.backoff * 2 ** (attempt - 1)))
            try:
                text = self._complete(messages)
            except (errors.AuthenticationError, errors.PermissionDeniedError, errors.NotFoundError) as err:
                raise JudgeError(f"judge {self.model} at {self.base_url or 'api.openai.com'}: {err}") from err
            except errors.BadRequestError as err:  # this prompt is refused (too long, filtered): do not insist
                return Judgment("failed", reply=reply, error=f"{type(err).__name__}: {err}", attempts=attempt + 1)
            except errors.APIConnectionError as err:
                error = f"{type(err).__name__}: {err}"
                connection_only = True
                continue
            except (errors.OpenAIError, ValueError, TypeError, AttributeError) as err:  # unreadable replies too
                error = f"{type(err).__name__}: {err}"
                connection_only = False
                continue
            connection_only = False
            reply = text
            parsed = rubric.parse(text)
            if parsed is not None:
                return Judgment("ok", parsed[0], parsed[1], text, attempts=attempt + 1)
            error = "reply could not be parsed"
        if connection_only:  # no try reached the server: nothing can be judged, so say it once and stop
            raise JudgeError(f"judge at {self.base_url or 'api.openai.com'} cannot be reached ({error}); start the "
                             "judge server or fix --base-url")
        status = "failed" if reply is None else "unparsed"
        return Judgment(status, reply=reply, error=error, attempts=self.max_retries + 1)

    def _run(self, rubric: Rubric, prompts: list[list[dict[str, str]]]) -> Iterator[tuple[int, Judgment]]:
        if not prompts:
            return
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="judge")
        try:
            futures = {pool.submit(self.judge_one, rubric, p): i for i, p in enumerate(prompts)}
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class LocalJudge(Judge):
    """A transformers causal LM as the judge, offline: the same rubrics through its chat template, greedy.

    Args:
        model_name_or_path: a local folder (or a hub name already in the local cache).
        cache_dir: folder of the judgment cache; None: no cache.
        device, dtype: as for `videopanda ask` ("auto": cuda + bfloat16 when there is a GPU).
        batch_size: prompts generated together (left padding).
        max_new_tokens: reply length limit.
        model, tokenizer: already loaded ones, instead of loading `model_name_or_path` (which then only names them).

    Greedy decoding is deterministic, so an unparseable reply is not retried: it is counted as "unparsed".
    """

    kind = "local"

    def __init__(
        self,
        model_name_or_path: str | os.PathLike,
        cache_dir: str | os.PathLike | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        max_new_tokens: int = 48,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..runtime import resolve_device, resolve_dtype

        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"need batch_size >= 1 and max_new_tokens >= 1; got {batch_size}, {max_new_tokens}")
        super().__init__(str(model_name_or_path), temperature=0.0, cache_dir=cache_dir)
        if model is None:
            dev = resolve_device(device)
            try:
                model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=resolve_dtype(dtype, dev))
            except OSError as err:
                raise JudgeError(f"local judge {model_name_or_path}: cannot load a causal LM ({err})") from None
            model = model.to(dev)
        self.llm = model.eval()
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_name_or_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text: the chat template with the assistant turn opened, or plain text without a template."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def replies(self, prompts: list[list[dict[str, str]]]) -> list[str]:
        """Greedy replies to a batch of chats."""
        import torch

        texts = [self.render(p) for p in prompts]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = inputs.to(self.llm.device)
        with torch.inference_mode():
            out = self.llm.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens,
                                    pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def _run(self, rubric: Rubric, prompts: list[list[dict[str, str]]]) -> Iterator[tuple[int, Judgment]]:
        for start in range(0, len(prompts), self.batch_size):
            for offset, text in enumerate(self.replies(prompts[start : start + self.batch_size])):
                parsed = rubric.parse(text)
                if parsed is None:
                    judgment = Judgment("unparsed", reply=text, error="reply could not be parsed", attempts=1)
                else:
                    judgment = Judgment("ok", parsed[0], parsed[1], text, attempts=1)
                yield start + offset, judgment


# -- open-ended VideoQA ------------------------------------------------------------------------------------------------
def judge_qa(
    judge: Judge, records: Sequence[Mapping[str, Any]], *, rubric: Rubric = QA_RUBRIC, progress: bool = False
) -> list[dict[str, Any]]:
    """Judge VideoQA predictions ({"id", "question", "answer", "pred", ...}, as run_videoqa writes them).

    Returns:
        The records, each with "verdict", "score", "status", "reply", "error", "judge", "judge_model",
        "temperature" and "prompt_version" added.
    """
    judgments = judge.judge(rubric, records, progress=progress)
    meta = {**judge.describe(), "prompt_version": rubric.prompt_version}
    out = []
    for record, j in zip(records, judgments):
        fields = {k: v for k, v in asdict(j).items() if k in ("verdict", "score", "status", "reply", "error")}
        out.append({**record, **fields, **meta})
    return out


def _tally(judged: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    ok = [r for r in judged if r["status"] == "ok"]
    yes = sum(r["verdict"] == "yes" for r in ok)
    no = sum(r["verdict"] == "no" for r in ok)
    return {
        "count": len(judged),
        "judged": len(ok),
        "yes": yes,
        "no": no,
        "accuracy": yes / (yes + no) if yes + no else None,
        "score": sum(r["score"] for r in ok) / len(ok) if ok else None,
        "unparsed": sum(r["status"] == "unparsed" for r in judged),
        "failed": sum(r["status"] == "failed" for r in judged),
    }


def aggregate(judged: Sequence[Mapping[str, Any]], key: str | None = None) -> dict[str, Any]:
    """The reference's aggregation: accuracy = yes / (yes + no) and the mean score, over the parsed judgments;
    unparsed and failed ones are counted, not scored. Overall and per value of `key` (e.g. "type").

    Returns:
        {"count", "judged", "yes", "no", "accuracy" (in [0, 1]), "score" (0-5), "unparsed", "failed", "key",
        "groups": {value: the same counts}}; accuracy and score are None when nothing was judged.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    if key is not None:
        for r in judged:
            if r.get(key) is not None:
                groups.setdefault(str(r[key]), []).append(r)
    return {**_tally(judged), "key": key, "groups": {g: _tally(groups[g]) for g in sorted(groups)}}
