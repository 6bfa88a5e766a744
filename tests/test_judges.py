"""Judges: reply parsing, the OpenAI-compatible judge against a real HTTP server on 127.0.0.1 (retries, cache, bad
replies), the local transformers judge, aggregation, and `eval judge` end to end with its report.

`JudgeServer` is a stdlib `http.server` speaking `/v1/chat/completions`. Its verdicts are deterministic functions of
the prompt, so the expected numbers are known; markers in a prediction make it misbehave:
    FAIL500 -> always HTTP 500;  FLAKY -> 500 on the first request for that prompt, then a verdict;
    GARBLED -> always an unreadable reply;  GARBLE-ONCE -> unreadable once, then a verdict;
    PYDICT / PROSE -> the verdict as a Python dict with a float score / as free text;  SLOW -> 0.2 s delay.
QA prompts: "yes" (score 5) when the correct answer occurs in the prediction, else "no" (score 1).
Score-only prompts (the Video-ChatGPT aspects): the score is the number of times "zebra" occurs, at most 5.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from judge_server import JudgeServer

from videopanda.eval.commands import main
from videopanda.eval.judges import (
    QA_RUBRIC,
    JudgeError,
    Judgment,
    JudgmentCache,
    LocalJudge,
    OpenAIJudge,
    Rubric,
    aggregate,
    judge_qa,
    parse_reply,
)
from videopanda.eval.report import qa_markdown

pytest.importorskip("openai")


def openai_judge(server: JudgeServer, cache=None, **kw) -> OpenAIJudge:
    kw = {"max_retries": 2, "backoff": 0.01, "workers": 4, **kw}
    return OpenAIJudge(server.url, kw.pop("model", "judge-test"), kw.pop("api_key", "sk-test"), cache, **kw)


def qa(i: int, pred: str, answer: str = "dog", type_: str = "what") -> dict:
    return {"id": i, "question": f"what animal is in clip {i}?", "answer": answer, "pred": pred, "type": type_}


# -- parsing -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "want"),
    [
        ('{"pred": "yes", "score": 4}', ("yes", 4)),
        ("{'pred': 'yes', 'score': 4.8}", ("yes", 4)),  # the reference's own example: int() truncates
        ('Sure! {"pred": "No", "score": "2"} Hope this helps.', ("no", 2)),
        ('```json\n{"pred": "yes", "score": 5}\n```', ("yes", 5)),
        ('{"PRED": true, "Score": 3}', ("yes", 3)),
        ('{"pred": "yes", "score": 9}', ("yes", 5)),  # clamped
        ('{"pred": "no", "score": -1}', ("no", 0)),
        ("Yes, they match. Score: 4", ("yes", 4)),
        ("no. 2", ("no", 2)),
        ('{"pred": "yes"}', None),  # no score
        ('{"score": 3}', None),  # no verdict
        ("I cannot judge this.", None),
        ("", None),
        ("__import__('os').system('echo pwned') yes 3", ("yes", 3)),  # text, never evaluated
    ],
)
def test_parse_verdict_replies(reply, want):
    assert parse_reply(reply, verdict=True) == want


@pytest.mark.parametrize(
    ("reply", "want"),
    [('{"score": 3}', 3), ("{'score': 4.9}", 4), ("Score: 2/5", 2), ("I give it 5.", 5), ("none", None),
     ('{"score": "high"}', None), ('{"score": NaN}', None)],
)
def test_parse_score_only_replies(reply, want):
    parsed = parse_reply(reply, verdict=False)
    assert (parsed and parsed[1]) == want and (parsed is None or parsed[0] is None)


def test_rubric_inserts_values_as_text():
    messages = QA_RUBRIC.messages({"question": "what is {pred}?", "answer": " a {0} ", "pred": "{answer}"})
    assert messages[0]["role"] == "system" and messages[1]["role"] == "user"
    assert "Question: what is {pred}?\nCorrect answer: a {0}\nPredicted answer: {answer}\n" in messages[1]["content"]
    with pytest.raises(ValueError, match="missing \\['pred'\\]"):
        QA_RUBRIC.messages({"question": "q", "answer": "a"})


# -- the API judge against a real HTTP server --------------------------------------------------------------------------
def test_openai_judge_verdicts_retries_and_bad_replies(api, tmp_path):
    records = [qa(0, "a dog"), qa(1, "a cat"), qa(2, "dog PYDICT"), qa(3, "cat PROSE"), qa(4, "dog FLAKY"),
               qa(5, "dog GARBLE-ONCE"), qa(6, "GARBLED"), qa(7, "FAIL500")]
    judge = openai_judge(api, tmp_path / "cache")
    judged = judge_qa(judge, records)
    got = [(r["status"], r["verdict"], r["score"]) for r in judged]
    assert got == [("ok", "yes", 5), ("ok", "no", 1), ("ok", "yes", 4), ("ok", "no", 1), ("ok", "yes", 5),
                   ("ok", "yes", 5), ("unparsed", None, None), ("failed", None, None)]
    assert [r["id"] for r in judged] == list(range(8)) and judged[0]["pred"] == "a dog"  # records kept, in order
    assert judged[6]["reply"] == "I am not sure how to grade this." and "parsed" in judged[6]["error"]
    assert "InternalServerError" in judged[7]["error"]
    assert {(r["judge"], r["judge_model"], r["prompt_version"], r["temperature"]) for r in judged} == {
        ("openai", "judge-test", "qa-v1", 0.0)}
    hits = sorted(api.hits.values())
    assert hits == [1, 1, 1, 1, 2, 2, 3, 3]  # FLAKY, GARBLE-ONCE: one retry; GARBLED, FAIL500: 1 + max_retries
    assert {b["temperature"] for b in api.bodies} == {0.0} and {b["model"] for b in api.bodies} == {"judge-test"}

    summary = aggregate(judged, key="type")
    assert summary["yes"] == 4 and summary["no"] == 2 and summary["accuracy"] == pytest.approx(4 / 6)
    assert summary["score"] == pytest.approx((5 + 1 + 4 + 1 + 5 + 5) / 6)
    assert (summary["count"], summary["judged"], summary["unparsed"], summary["failed"]) == (8, 6, 1, 1)
    assert summary["groups"] == {"what": {k: v for k, v in summary.items() if k not in ("key", "groups")}}


def test_cache_avoids_new_requests(api, tmp_path):
    records = [qa(0, "a dog"), qa(1, "a cat"), qa(2, "GARBLED"), qa(3, "a dog")]  # 0 and 3 ask the same thing
    records[3]["question"] = records[0]["question"]
    first = judge_qa(openai_judge(api, tmp_path / "cache"), records)
    assert api.total == 2 + 3  # the duplicate asked once; GARBLED three times
    assert [r["status"] for r in first] == ["ok", "ok", "unparsed", "ok"]
    assert len(JudgmentCache(tmp_path / "cache")) == 2  # only parsed judgments are stored

    api.reset()
    again = judge_qa(openai_judge(api, tmp_path / "cache"), records)  # a new process, same cache folder
    assert api.total == 3 and set(api.hits) == {QA_RUBRIC.messages(records[2])[1]["content"]}
    assert [(r["verdict"], r["score"]) for r in again] == [(r["verdict"], r["score"]) for r in first]

    api.reset()
    judge_qa(openai_judge(api, tmp_path / "cache", model="another-judge"), records[:2])
    judge_qa(openai_judge(api, tmp_path / "cache", temperature=0.5), records[:2])
    assert api.total == 4  # another model or temperature is another judgment
    api.reset()
    judge_qa(openai_judge(api, None), records[:2])
    assert api.total == 2  # no cache


def test_requests_run_concurrently(api):
    judge_qa(openai_judge(api, workers=4), [qa(i, f"dog SLOW {i}") for i in range(8)])
    assert api.max_active >= 2


def test_api_default_temperature_sends_none(api):
    judge_qa(openai_judge(api, temperature=None), [qa(0, "dog")])
    assert "temperature" not in api.bodies[0]


def test_unreadable_replies_are_retried_then_counted(api):
    """A 200 whose body is an HTML page or cut-off JSON (a proxy in the way) is not a crash: it is retried, then
    counted as failed, and the other records are judged."""
    judged = judge_qa(openai_judge(api), [qa(0, "dog HTML"), qa(1, "dog TRUNCJSON"), qa(2, "a dog")])
    assert [r["status"] for r in judged] == ["failed", "failed", "ok"]
    assert sorted(api.hits.values()) == [1, 3, 3]


def test_an_unreachable_judge_is_one_clear_error():
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    judge = OpenAIJudge(url, "judge-test", "k", None, max_retries=1, backoff=0.01, timeout=5)
    with pytest.raises(JudgeError, match="cannot be reached.*--base-url"):
        judge_qa(judge, [qa(0, "dog")])


def test_bad_key_stops_at_once(api):
    start = time.perf_counter()
    with pytest.raises(JudgeError, match="invalid api key"):
        judge_qa(openai_judge(api, api_key="bad-key", backoff=5.0), [qa(i, "dog") for i in range(20)])
    assert time.perf_counter() - start < 4


def test_settings_from_the_environment(api, monkeypatch):
    with pytest.raises(JudgeError, match="OPENAI_API_KEY"):
        OpenAIJudge()
    monkeypatch.setenv("OPENAI_BASE_URL", api.url)
    monkeypatch.setenv("VIDEOPANDA_JUDGE_MODEL", "env-judge")
    judge = OpenAIJudge(backoff=0.01)  # a key is optional for a server other than OpenAI's
    assert judge.model == "env-judge" and judge.base_url == api.url
    judge_qa(judge, [qa(0, "dog")])
    assert api.bodies[0]["model"] == "env-judge"


# -- the local judge ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory, tiny_model, smollm2_tokenizer) -> Path:
    """The LLM of the tiny model (a random 2-layer LLaMA) with the real SmolLM2 tokenizer (and its chat template),
    saved as a folder."""
    folder = tmp_path_factory.mktemp("tiny_judge")
    tiny_model.language_model.save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


def test_local_judge_runs_offline_and_counts_unparsed(tiny_llm, tmp_path):
    judge = LocalJudge(tiny_llm, tmp_path / "cache", device="cpu", batch_size=2, max_new_tokens=8)
    prompt = judge.render(QA_RUBRIC.messages(qa(0, "a dog")))
    assert "Predicted answer: a dog" in prompt and prompt.startswith("<|im_start|>system")  # the chat template
    records = [qa(i, p) for i, p in enumerate(["a dog", "a cat", "two dogs", "nothing"])]
    judged = judge_qa(judge, records)
    assert [r["id"] for r in judged] == [0, 1, 2, 3]
    assert {r["status"] for r in judged} <= {"ok", "unparsed"}  # random text rarely parses; never a crash
    assert all(r["reply"] is not None for r in judged)
    assert {(r["judge"], r["judge_model"], r["temperature"]) for r in judged} == {("local", str(tiny_llm), 0.0)}
    summary = aggregate(judged)
    assert summary["judged"] + summary["unparsed"] == 4 and summary["failed"] == 0
    alone = judge_qa(judge, records[2:3])  # greedy: the same reply alone as in a batch
    assert alone[0]["reply"] == judged[2]["reply"]
    with pytest.raises(JudgeError, match="cannot load"):
        LocalJudge(tmp_path / "no_such_model")


def test_local_judge_parses_a_scripted_reply(tiny_llm, monkeypatch):
    judge = LocalJudge(tiny_llm, device="cpu", max_new_tokens=4)
    monkeypatch.setattr(judge, "replies", lambda prompts: ['{"pred": "yes", "score": 4}'] * len(prompts))
    rubric = Rubric("t", "v0", "s", "{question}|{answer}|{pred}", ("question", "answer", "pred"), verdict=True)
    assert judge.judge(rubric, [qa(0, "dog")]) == [Judgment("ok", "yes", 4, '{"pred": "yes", "score": 4}',
                                                            attempts=1)]


# -- `eval judge` and the report ---------------------------------------------------------------------------------------
def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_eval_judge_command_end_to_end(api, tmp_path, capsys):
    records = [qa(0, "a dog"), qa(1, "a cat", type_="who"), qa(2, "dog", type_="who"), qa(3, "GARBLED")]
    first, second = write_jsonl(tmp_path / "2_0.json", records[:2]), write_jsonl(tmp_path / "2_1.json", records[2:])
    out = tmp_path / "out"
    argv = ["judge", "--pred", str(first), str(second), "--out", str(out), "--dataset", "msvd", "--base-url",
            api.url, "--judge-model", "judge-test", "--api-key", "sk-test", "--cache-dir", str(tmp_path / "cache"),
            "--retry-wait", "0.01", "--max-retries", "1", "--model-name", "tiny"]
    assert main(["-v", *argv]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["judged"]["accuracy"] == pytest.approx(2 / 3) and printed["judged"]["unparsed"] == 1
    assert printed["scores"]["count"] == 4
    result = json.loads((out / "results.json").read_text())
    assert result["judge"] == {"judge": "openai", "judge_model": "judge-test", "temperature": 0.0,
                               "prompt_version": "qa-v1"}
    assert result["judged"]["key"] == "type" and set(result["judged"]["groups"]) == {"what", "who"}
    assert result["scores"]["count"] == 4 and result["scores"]["exact_match"] == pytest.approx(2 / 4)  # judge-free
    judged = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert [r["id"] for r in judged] == [0, 1, 2, 3] and judged[3]["status"] == "unparsed"
    report = (out / "report.md").read_text()
    assert "## MSVD-QA" in report and "| Video-Panda, paper (GPT-3.5 judge) | 64.7 | 3.8 |" in report
    assert "| ours (tiny) | 66.7 | 3.67 | 3 |" in report and "1 judge replies unparsed" in report
    assert "| who | 2 | 50.0 |" in report

    hits = api.total
    assert main(["-v", *argv]) == 0
    assert api.total == hits + 2  # rerun: only the unparsed one is asked again (1 + 1 retry)
    capsys.readouterr()
    assert main(["-v", *argv[:6], "--judge", "none", "--dataset", "tgif"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert "judged" not in result and result["scores"]["count"] == 4
    report = (out / "report.md").read_text()
    assert "| Video-Panda, paper (GPT-3.5 judge) | 42.9 | 3.2 |" in report and "Judge: none" in report


def test_eval_judge_bad_input_fails_cleanly(api, tmp_path, capsys):
    assert main(["-v", "judge", "--pred", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path), "--judge", "none"]) == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err
    pred = write_jsonl(tmp_path / "p.jsonl", [qa(0, "dog")])
    assert main(["-v", "judge", "--pred", str(pred), "--out", str(tmp_path / "o"), "--no-cache"]) == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err
    assert main(["-v", "judge", "--pred", str(pred), "--out", str(tmp_path / "o"), "--judge", "local"]) == 2
    assert "--judge-model" in capsys.readouterr().err
    assert main(["-v", "judge", "--pred", str(pred), "--out", str(tmp_path / "o"), "--questions", str(pred),
                 "--judge", "none"]) == 2
    assert "both --questions and --answers" in capsys.readouterr().err


@pytest.mark.parametrize(("dataset", "row"), [("msvd", "64.7 | 3.8"), ("msrvtt", "54.8 | 3.4"),
                                              ("tgif", "42.9 | 3.2"), ("activitynet", "40.0 | 3.3")])
def test_qa_report_has_the_paper_row(dataset, row):
    scores = {"count": 1, "exact_match": 1.0, "contains_match": 1.0, "token_f1": 1.0, "key": None, "groups": {},
              "missing": 0}
    report = qa_markdown({"dataset": dataset, "model": "m", "scores": scores})
    assert f"| Video-Panda, paper (GPT-3.5 judge) | {row} |" in report
    assert "| ours (m) | - | - | - | 100.0 | 100.0 | 1.00 |" in report
    assert "Video-Panda, paper" not in qa_markdown({"dataset": "synth", "model": "m", "scores": scores})
