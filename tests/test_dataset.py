"""LLaVA-format training data: every malformed entry is skipped and counted with its reason, never a crash.

A training JSON is a list of `{"id", "video", "conversations": [{"from": "human", "value": ...}, {"from": "gpt",
"value": ...}]}`. Entries of the wrong shape (a turn without `value`, a null or non-string answer, turns given as
strings, `video` as a number or a list, ...) come back from the dataset as `Skipped` and are counted by the recipe
against `--max-skip-fraction`; a file that is not a JSON list (or has no usable entry at all) is one error at load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from videopanda import VideoPandaProcessor
from videopanda.cli import main
from videopanda.data.dataset import ConversationDataset, Sample, SkipCounter, Skipped, collate, entry_problem
from videopanda.data.sampler import estimate_lengths

REPO = Path(__file__).resolve().parents[1]


def turns(question: object = "<video>\nWhat is there?", answer: object = "a red circle") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


GOOD_VIDEO = {"id": "good_video", "video": "clip.mp4", "conversations": turns()}
GOOD_TEXT = {"id": "good_text", "conversations": turns("How many sides has a square?", "four")}

# Each malformed shape, with the reason it is counted under (`SkipCounter` groups by the text after the last colon).
MALFORMED = {
    "turn without value": ({"id": "a", "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt"}]},
                           "malformed entry, a turn has no 'value'"),
    "null answer": ({"id": "b", "conversations": turns(answer=None)},
                    "malformed entry, a turn's 'value' is a JSON null instead of a string"),
    "number answer": ({"id": "c", "conversations": turns(answer=4)},
                      "malformed entry, a turn's 'value' is a JSON number instead of a string"),
    "list question": ({"id": "d", "conversations": turns(question=["<video>", "What?"])},
                      "malformed entry, a turn's 'value' is a JSON list instead of a string"),
    "turns as strings": ({"id": "e", "video": "clip.mp4", "conversations": ["<video>\nWhat is there?", "a circle"]},
                         "malformed entry, a turn is a JSON string instead of an object"),
    "turns as lists": ({"id": "f", "conversations": [["human", "Q?"], ["gpt", "A"]]},
                       "malformed entry, a turn is a JSON list instead of an object"),
    "video as number": ({"id": "g", "video": 12, "conversations": turns()},
                        "malformed entry, 'video' is a JSON number instead of a path"),
    "video as list": ({"id": "h", "video": ["clip.mp4", "clip.mp4"], "conversations": turns()},
                      "malformed entry, 'video' is a JSON list instead of a path"),
    "video null": ({"id": "i", "video": None, "conversations": turns()},
                   "malformed entry, 'video' is a JSON null instead of a path"),
    "video empty": ({"id": "j", "video": "", "conversations": turns()}, "malformed entry, 'video' is an empty path"),
    "image as object": ({"id": "k", "image": {"path": "x.jpg"}, "conversations": turns("<image>\nQ?")},
                        "malformed entry, 'image' is a JSON object instead of a path"),
    "no conversations": ({"id": "l", "video": "clip.mp4"}, "malformed entry, no 'conversations' list"),
    "conversations as string": ({"id": "m", "conversations": "Q? A."},
                                "malformed entry, 'conversations' is a JSON string instead of a list"),
    "conversations as object": ({"id": "n", "conversations": {"from": "human", "value": "Q?"}},
                                "malformed entry, 'conversations' is a JSON object instead of a list"),
    "no turns": ({"id": "o", "conversations": []}, "conversations must alternate human/gpt turns"),
    "odd turns": ({"id": "p", "conversations": turns()[:1]}, "conversations must alternate human/gpt turns"),
    "gpt first": ({"id": "q", "conversations": turns()[::-1]}, "expected human then gpt turns"),
    "entry is a string": ("synth_000000.mp4", "malformed entry, a JSON string instead of an object"),
    "entry is a list": ([GOOD_VIDEO], "malformed entry, a JSON list instead of an object"),
    "entry is null": (None, "malformed entry, a JSON null instead of an object"),
    "entry is a number": (7, "malformed entry, a JSON number instead of an object"),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model, smollm2_tokenizer) -> Path:
    """The shared tiny model (conftest.py) with the real SmolLM2 tokenizer, saved as a folder."""
    folder = tmp_path_factory.mktemp("dataset") / "model"
    tiny_model.save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def processor(model_dir: Path) -> VideoPandaProcessor:
    return VideoPandaProcessor.from_pretrained(model_dir)


def write_data(folder: Path, entries: list) -> Path:
    shutil.copy(REPO / "videopanda" / "assets" / "sample.mp4", folder / "clip.mp4")
    path = folder / "train.json"
    path.write_text(json.dumps(entries))
    return path


@pytest.mark.parametrize("shape", list(MALFORMED))
def test_each_malformed_shape_is_skipped_with_its_reason(shape, processor, tmp_path):
    entry, reason = MALFORMED[shape]
    data = ConversationDataset(write_data(tmp_path, [GOOD_TEXT, entry, GOOD_TEXT]), processor)
    assert entry_problem(entry) == reason
    skipped = data[1]
    assert isinstance(skipped, Skipped) and skipped.index == 1
    assert skipped.reason.startswith("item 1") and skipped.reason.endswith(f": {reason}")
    assert isinstance(data[0], Sample) and isinstance(data[2], Sample)  # the neighbours are unaffected
    counter = SkipCounter()
    batch = collate([data[i] for i in range(3)], processor.tokenizer.pad_token_id)
    counter.add(batch["seen"], batch["skipped"])
    assert counter.seen == 3 and counter.skipped == {reason: 1}
    assert batch["input_ids"].shape[0] == 2


def test_a_file_of_every_malformed_shape_loads_counts_and_estimates_lengths(processor, tmp_path):
    """All shapes in one file: each skipped under its reason, and `--group-by-length`'s estimate reads them."""
    entries = [GOOD_VIDEO, *(entry for entry, _ in MALFORMED.values()), GOOD_TEXT]
    data = ConversationDataset(write_data(tmp_path, entries), processor)
    assert sorted(data.malformed) == list(range(1, len(entries) - 1))
    out = [data[i] for i in range(len(data))]
    assert [isinstance(s, Sample) for s in out] == [True] + [False] * len(MALFORMED) + [True]
    counter = SkipCounter()
    batch = collate(out, processor.tokenizer.pad_token_id)
    counter.add(batch["seen"], batch["skipped"])
    expected: dict[str, int] = {}
    for _, reason in MALFORMED.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert counter.skipped == expected and counter.total == len(MALFORMED) and counter.seen == len(entries)
    assert out[2].reason == "item 2 (id b): malformed entry, a turn's 'value' is a JSON null instead of a string"
    lengths = estimate_lengths(data.items, processor.config)  # what --group-by-length reads: no crash
    assert lengths[0] > 7 and lengths[-1] == 7 and all(lengths[1:-1] == 0)
    assert [data.length_hint(i) for i in (0, 1, len(data) - 1)] == [7, 0, 7]


@pytest.mark.parametrize("content, kind", [('{"id": "x", "conversations": []}', "object"), ('"train.json"', "string"),
                                           ("3", "number"), ("null", "null")])
def test_a_top_level_json_that_is_not_a_list_is_one_clear_error_at_load(content, kind, processor, tmp_path):
    path = tmp_path / "train.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"train\.json: expected a JSON list of LLaVA-format entries .*got a JSON "
                                         rf"{kind}$"):
        ConversationDataset(path, processor)


def test_unreadable_files_and_files_without_one_usable_entry_fail_at_load(processor, tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[{"id": "x", ')
    with pytest.raises(ValueError, match="cannot read training JSON"):
        ConversationDataset(path, processor)
    path.write_bytes(b'[{"id": "\xff"}]')
    with pytest.raises(ValueError, match="cannot read training JSON"):
        ConversationDataset(path, processor)
    with pytest.raises(ValueError, match="cannot read training JSON"):
        ConversationDataset(tmp_path / "missing.json", processor)
    # e.g. a VideoQA question file given as training data: refused before any model work
    path.write_text(json.dumps([{"video_name": "v1", "question": "Q?", "question_id": "v1_0"}] * 3))
    with pytest.raises(ValueError, match=r"none of the 3 entries is a LLaVA-format training item \(the first one: "
                                         r"item 0: malformed entry, no 'conversations' list\)"):
        ConversationDataset(path, processor)
    path.write_text("[]")
    assert len(ConversationDataset(path, processor)) == 0


def train_args(model_dir: Path, data: Path, out: Path, *extra: object) -> list[str]:
    return ["-v", "train", "--data", str(data), "--out", str(out), "--model", str(model_dir), "--steps", "6",
            "--batch-size", "4", "--num-workers", "0", "--stage", "finetune", "--log-every", "1",
            "--save-every", "100", "--no-tensorboard", *map(str, extra)]


def test_the_recipe_counts_malformed_entries_against_max_skip_fraction(model_dir, tmp_path, capsys):
    """Through `videopanda train`: a run goes on past malformed entries and reports them; past the threshold it
    stops with the reasons."""
    good = [{**GOOD_TEXT, "id": f"t{k}"} for k in range(10)] + [GOOD_VIDEO]
    entries = good + [entry for entry, _ in list(MALFORMED.values())[:9]]  # 9 of 20 malformed
    data = write_data(tmp_path, entries)

    assert main(train_args(model_dir, data, tmp_path / "ok", "--max-skip-fraction", 0.6)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["seen"] == 24 and summary["steps"] == 6
    reasons = {reason for _, reason in MALFORMED.values()}
    assert set(summary["skipped"]) <= reasons and sum(summary["skipped"].values()) > 0
    log = [json.loads(line) for line in (tmp_path / "ok" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["skipped"] == sum(summary["skipped"].values())

    with pytest.raises(RuntimeError, match=r"too many skipped samples: \d+ of 2\d .*malformed entry"):
        main(train_args(model_dir, data, tmp_path / "stop"))  # the default --max-skip-fraction, 5%
