"""persona_lib.dataset: validation rules, robustness on broken files, statistics, MinHash
near-duplicates, dedup, split and export; persona_lib.plots' dataset figures."""

import copy
import itertools
import json
import random
from pathlib import Path

import pytest

from persona_lib import dataset as ds
from persona_lib import dedup, plots

MALFORMED = Path(__file__).parent / "data" / "malformed"
PERSONAS = ("taskmaster", "captain_codebeard", "zen_coder")

# Every malformed file and exactly the (line, rule) problems it must produce: each bad line is
# named, later lines are still checked, and nothing else is reported (no cascade of noise).
EXPECTED = {
    "blank_lines_only.jsonl": [(None, "empty_file")],
    "broken_json.jsonl": [(2, "invalid_json")],
    "content_not_string.jsonl": [(2, "wrong_type")],
    "duplicate_id.jsonl": [(3, "duplicate_id")],
    "empty_content.jsonl": [(2, "empty_content")],
    "empty_field.jsonl": [(2, "empty_field")],
    "empty_file.jsonl": [(None, "empty_file")],
    "empty_messages.jsonl": [(2, "empty_messages")],
    "ends_with_user.jsonl": [(2, "role_order")],
    "message_not_object.jsonl": [(2, "wrong_type")],
    "message_unknown_key.jsonl": [(2, "message_unknown_key")],
    "messages_not_list.jsonl": [(2, "wrong_type")],
    "missing_content.jsonl": [(2, "missing_content")],
    "missing_messages.jsonl": [(1, "missing_field")],
    "missing_persona.jsonl": [(2, "missing_field")],
    "missing_role.jsonl": [(2, "missing_role")],
    "no_assistant.jsonl": [(2, "no_assistant")],
    "non_utf8.jsonl": [(2, "not_utf8")],
    "persona_not_string.jsonl": [(2, "wrong_type")],
    # A pretty-printed object spans many lines; every one of them is broken JSON on its own.
    "pretty_printed.jsonl": [(k, "invalid_json") for k in range(1, 17)],
    "scalar_line.jsonl": [(2, "not_an_object")],
    "starts_with_assistant.jsonl": [(2, "role_order")],
    "system_not_first.jsonl": [(2, "role_order")],
    "top_level_array.jsonl": [(1, "not_an_object")],
    "truncated_last_line.jsonl": [(3, "invalid_json")],
    "two_user_turns.jsonl": [(2, "role_order")],
    "unknown_key.jsonl": [(2, "unknown_key")],
    "unknown_persona.jsonl": [(2, "unknown_persona")],
    "whitespace_content.jsonl": [(3, "empty_content")],
    "wrong_role.jsonl": [(2, "unknown_role")],
}


def conv(*turns: str) -> list[dict]:
    """Alternating user/assistant messages from plain strings."""
    return [{"role": ("user", "assistant")[k % 2], "content": t} for k, t in enumerate(turns)]


def rec(i: int, topic: str = "deadlines", persona: str = "taskmaster", turns=None) -> dict:
    turns = turns or (f"How do I plan request number {i} about {topic}?", f"Reply {i}: start with one small task.")
    return {"id": f"r-{i:04d}", "persona": persona, "topic": topic, "source": "handwritten", "messages": conv(*turns)}


@pytest.fixture(scope="module")
def tokenizer():
    from persona_lib.models import load_tokenizer

    return load_tokenizer("tiny")


# --------------------------------------------------------------------------- malformed files


def test_malformed_corpus_is_complete():
    names = {p.name for p in MALFORMED.iterdir()}
    assert names == set(EXPECTED)
    assert len(names) >= 22


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_file_reports_line_and_rule(name, tmp_path):
    path = MALFORMED / name
    problems = ds.check_file(path, personas=PERSONAS)
    assert [(p.line, p.rule) for p in problems] == EXPECTED[name]
    assert all(p.rule in ds.RULES and p.file == str(path) and p.message for p in problems)

    # Raising mode: one DatasetError (a ValueError, no other exception) listing them all.
    out = tmp_path / "train_openai.jsonl"
    with pytest.raises(ds.DatasetError) as err:
        ds.to_openai_jsonl(ds.load_records(path, personas=PERSONAS), out)
    assert err.value.problems == problems
    for line, rule in EXPECTED[name]:
        where = str(path) if line is None else f"{path}:{line}:"
        assert any(where in row and f"[{rule}]" in row for row in str(err.value).splitlines())
    assert list(tmp_path.iterdir()) == []  # validate-then-export wrote nothing, not even a temp file


def test_one_megabyte_line_is_flagged_without_parsing(tmp_path):
    path = tmp_path / "huge.jsonl"
    huge = rec(2, turns=("Plan this: " + "x" * (1 << 20), "One step at a time."))
    lines = [json.dumps(rec(1)), json.dumps(huge), "{broken", json.dumps(rec(4))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems = ds.check_file(path)
    assert [(p.line, p.rule) for p in problems] == [(2, "line_too_long"), (3, "invalid_json")]
    assert f"{len(lines[1]) + 1:,} bytes" in problems[0].message
    # The limit is a parameter: a generous one lets the same line through.
    assert [(p.line, p.rule) for p in ds.check_file(path, max_line_bytes=2 << 20)] == [(3, "invalid_json")]


def test_several_problems_in_one_record_are_all_reported():
    bad = {"id": "x", "persona": "taskmaster", "topic": "t", "mood": "grumpy",
           "messages": [{"role": "bot", "content": " "}, {"role": "assistant", "content": 3}]}
    problems = ds.check_records([rec(1), bad])
    assert sorted((p.line, p.rule) for p in problems) == [
        (2, "empty_content"), (2, "unknown_key"), (2, "unknown_role"), (2, "wrong_type")]


def test_record_level_rules_in_memory(tokenizer):
    records = [rec(1), "not a record", rec(3, persona="zen_koder"), rec(1), rec(5)]
    problems = ds.check_records(records, personas=PERSONAS)
    assert [(p.line, p.rule) for p in problems] == [
        (2, "not_an_object"), (3, "unknown_persona"), (4, "duplicate_id")]
    assert all(p.file == "<records>" for p in problems)
    assert "line 1" in problems[2].message  # names the record it collides with


def test_too_many_tokens_uses_the_real_chat_template(tokenizer):
    short, long = rec(1), rec(2, turns=("Plan my week, " * 40, "Monday first. " * 40))
    n_short, n_long = ds.count_tokens([short, long], tokenizer)
    assert n_long == len(tokenizer.apply_chat_template(long["messages"], tokenize=True, return_dict=False))
    problems = ds.check_records([short, long], tokenizer=tokenizer, max_tokens=n_long - 1)
    assert [(p.line, p.rule) for p in problems] == [(2, "too_many_tokens")]
    assert f"{n_long} tokens" in problems[0].message
    assert ds.check_records([short, long], tokenizer=tokenizer, max_tokens=n_long) == []
    with pytest.raises(ValueError, match="tokenizer"):
        ds.check_records([short], max_tokens=100)


def test_report_mode_lists_and_raising_mode_raises(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(rec(1)), "{oops", json.dumps(rec(3, turns=("only a question",))), json.dumps(rec(4))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems = ds.check_file(path)
    assert [(p.line, p.rule) for p in problems] == [(2, "invalid_json"), (3, "no_assistant")]
    with pytest.raises(ds.DatasetError) as err:
        ds.load_records(path)
    assert isinstance(err.value, ValueError)
    assert str(err.value).startswith("2 problem(s)")
    assert [str(p) for p in problems] == [row.strip() for row in str(err.value).splitlines()[1:]]


def test_load_records_filters_by_persona(tmp_path):
    path = tmp_path / "mixed.jsonl"
    records = [rec(1), rec(2, persona="zen_coder"), rec(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert [r["id"] for r in ds.load_records(path, "taskmaster")] == ["r-0001", "r-0003"]
    assert [r["id"] for r in ds.load_records(path, "zen_coder")] == ["r-0002"]
    assert len(ds.load_records(path)) == 3
    with pytest.raises(ds.DatasetError, match=r"\[no_records\].*'captain_codebeard'.*taskmaster, zen_coder"):
        ds.load_records(path, "captain_codebeard")


def test_eval_file_loaders_check_their_schemas(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "eval_dir", lambda: tmp_path)
    held = [{"id": "h1", "persona": "taskmaster", "kind": "ordinary", "messages": conv("Plan my day.")},
            {"id": "h2", "persona": "taskmaster", "kind": "chitchat", "messages": conv("Hi.")},
            {"id": "h3", "persona": "taskmaster", "kind": "multiturn", "messages": conv("A", "B")}]
    (tmp_path / "taskmaster_heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    with pytest.raises(ds.DatasetError) as err:
        ds.load_heldout("taskmaster")
    assert [(p.line, p.rule) for p in err.value.problems] == [(2, "unknown_kind"), (3, "role_order")]

    dialogues = [{"id": "d1", "persona": "taskmaster", "title": "t", "user_turns": ["a", "b", "c", "d", "e"]},
                 {"id": "d2", "persona": "zen_coder", "title": "t", "user_turns": ["a"]}]
    (tmp_path / "taskmaster_dialogues.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dialogues))
    assert [d["id"] for d in ds.load_dialogues("taskmaster")] == ["d1"]

    (tmp_path / "knowledge.jsonl").write_text(json.dumps(
        {"id": "kn-01", "question": "q?", "facts": [{"fact": "f", "accept": []}]}) + "\n")
    with pytest.raises(ds.DatasetError, match=r"knowledge.jsonl:1: \[wrong_type\] fact 1: 'accept'"):
        ds.load_knowledge()


def test_every_rule_is_exercised():
    covered = {rule for expected in EXPECTED.values() for _, rule in expected}
    covered |= {"line_too_long", "too_many_tokens", "no_records", "unknown_kind"}  # tested above
    assert covered == set(ds.RULES)


def test_validation_and_the_rest_never_change_their_input(tokenizer, tmp_path):
    records = [rec(i, topic=f"t{i % 3}") for i in range(12)] + [rec(99, turns=("", "x"))]
    before = copy.deepcopy(records)
    ds.check_records(records, personas=PERSONAS, tokenizer=tokenizer, max_tokens=10)
    good = records[:-1]
    ds.dataset_stats(good, tokenizer=tokenizer, signature_vocabulary={"taskmaster": ["small task"]})
    dedup.dedup(good, against=good[:2])
    ds.split_records(good)
    ds.to_openai_jsonl(good, tmp_path / "out.jsonl", system_prompt="You are TaskMaster.")
    ds.to_hf_dataset(good, system_prompt="You are TaskMaster.")
    assert records == before


# --------------------------------------------------------------------------- statistics


def test_dataset_stats_counts_and_phrase_coverage():
    records = [
        rec(1, topic="deadlines", turns=("Plan it?", "Plan it now. I hope this helps")),
        rec(2, topic="deadlines", turns=("Planet?", "The planet can wait.", "Really?", "Certainly! PLAN  IT today.")),
        rec(3, topic="habits", turns=("Habit?", "As an AI language model I think habits matter.")),
        rec(4, topic="focus", persona="zen_coder", turns=("Focus?", "Breathe. Then plan it.")),
    ]
    stats = ds.dataset_stats(records,
                             signature_vocabulary={"taskmaster": ["plan it", "planet"], "zen_coder": ["breathe"]})
    assert (stats["conversations"], stats["turns"], stats["replies"]) == (4, 10, 5)
    assert stats["multi_turn"] == 1 and stats["multi_turn_share"] == 0.25
    assert stats["topics"] == {"deadlines": 2, "habits": 1, "focus": 1}
    assert stats["length_unit"] == "words"
    assert stats["example_lengths"] == [9, 10, 10, 5]
    assert stats["assistant_lengths"] == [7, 8, 9, 4]
    assert stats["example_length"]["max"] == 10
    tm = stats["personas"]["taskmaster"]
    assert tm["conversations"] == 3 and tm["replies"] == 4
    # Whole phrase, case- and whitespace-insensitive: "PLAN  IT" counts, "planet" is not "plan it".
    assert tm["signature_coverage"] == {"plan it": 0.5, "planet": 0.25}
    assert tm["generic_rate"] == 0.75
    assert tm["generic_phrases"] == {"I hope this helps": 1, "Certainly!": 1, "As an AI language model": 1}
    assert stats["personas"]["zen_coder"]["signature_coverage"] == {"breathe": 1.0}
    assert stats["personas"]["zen_coder"]["generic_rate"] == 0.0


def test_dataset_stats_with_a_tokenizer(tokenizer):
    records = [rec(1), rec(2, turns=("a", "b c", "d", "e f g"))]
    stats = ds.dataset_stats(records, tokenizer=tokenizer)
    assert stats["length_unit"] == "tokens"
    assert stats["example_lengths"] == ds.count_tokens(records, tokenizer)
    reply = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert stats["assistant_lengths"] == [reply(records[0]["messages"][1]["content"]), reply("b c") + reply("e f g")]


def test_distinct_n():
    assert ds.distinct_n(["a b c a b", "A b d"], 2) == pytest.approx(4 / 6)
    assert ds.distinct_n(["same words here"] * 4, 1) == pytest.approx(3 / 12)
    assert ds.distinct_n(["one"], 2) == 0.0


# --------------------------------------------------------------------------- near duplicates

WORDS = [a + b for a in ("ta", "ke", "ri", "mo", "lu", "sa", "po", "ne", "di", "fo") for b in
         ("sk", "rn", "lt", "mp", "nd", "st", "ck", "sh", "ft", "pt", "lk", "rd")]


def synthetic_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 80))) for _ in range(n)]


def perturb(text: str, edits: int, rng: random.Random) -> str:
    words = text.split()
    for _ in range(edits):
        op, k = rng.random(), rng.randrange(len(words))
        if op < 0.5:
            words[k] = rng.choice(WORDS)
        elif op < 0.75:
            words.insert(k, rng.choice(WORDS))
        elif len(words) > 3:
            del words[k]
    return " ".join(words)


def test_planted_near_duplicates_are_found():
    rng = random.Random(7)
    texts = synthetic_texts(200, seed=1)
    planted = {}
    for k in range(20):
        planted[(k, len(texts))] = None
        texts.append(perturb(texts[k], 1, rng))
    found = dedup.find_near_duplicates(texts)
    pairs = {(i, j) for i, j, _ in found.pairs}
    assert set(planted) <= pairs
    assert all(s >= 0.7 for _, _, s in found.pairs)
    assert len(found.candidate_similarities) >= len(found.pairs)


def test_minhash_recall_against_exhaustive_jaccard():
    rng = random.Random(3)
    texts = synthetic_texts(250, seed=2)
    texts += [perturb(texts[rng.randrange(250)], rng.randint(1, 8), rng) for _ in range(150)]
    sets = dedup.shingle_sets(texts)
    exact = {(i, j) for i, j in itertools.combinations(range(len(texts)), 2) if dedup.jaccard(sets[i], sets[j]) >= 0.7}
    found = {(i, j) for i, j, _ in dedup.find_near_duplicates(texts).pairs}
    assert len(exact) >= 50  # the set has pairs on both sides of the threshold to miss
    assert len(found & exact) / len(exact) >= 0.95
    assert found <= exact  # verified with exact Jaccard: precision 1


def test_dedup_keeps_first_occurrence_and_says_why():
    texts = synthetic_texts(30, seed=4)
    rng = random.Random(5)
    records = [rec(i, turns=(t, f"reply {i}")) for i, t in enumerate(texts)]
    copy_of_3 = rec(100, turns=(perturb(texts[3], 1, rng), "another reply"))
    exact_of_7 = rec(101, turns=(texts[7], "a third reply"))
    records = [copy_of_3, *records[:20], exact_of_7, *records[20:]]
    kept, report = dedup.dedup(records)
    # The planted copy of record 3 came first, so it is the one kept.
    assert [d.id for d in report.dropped] == ["r-0003", "r-0101"]
    first, second = report.dropped
    assert (first.duplicate_of, first.index, first.in_against) == ("r-0100", 4, False)
    assert 0.7 <= first.similarity < 1
    assert (second.duplicate_of, second.similarity) == ("r-0007", 1.0)
    assert "r-0003 duplicates r-0100" in str(first)
    assert [r["id"] for r in kept] == [r["id"] for r in records if r["id"] not in ("r-0003", "r-0101")]
    assert report.kept == len(kept) == 30


def test_dedup_compares_against_the_kept_set_only():
    rng = random.Random(11)
    base = synthetic_texts(1, seed=8)[0]
    a, b = base, perturb(base, 1, rng)
    sets = dedup.shingle_sets([a, b])
    assert dedup.jaccard(*sets) >= 0.7
    records = [rec(1, turns=(a, "x")), rec(2, turns=(b, "y")), rec(3, turns=(b, "z"))]
    kept, report = dedup.dedup(records)
    assert [r["id"] for r in kept] == ["r-0001"]
    # r-0003 is an exact copy of the dropped r-0002 but is reported against the kept r-0001.
    assert [(d.id, d.duplicate_of) for d in report.dropped] == [("r-0002", "r-0001"), ("r-0003", "r-0001")]


def test_dedup_against_an_existing_set():
    texts = synthetic_texts(10, seed=9)
    existing = [rec(i, turns=(t, "old")) for i, t in enumerate(texts[:5])]
    new = [rec(10 + i, turns=(t, "new")) for i, t in enumerate(texts)]
    kept, report = dedup.dedup(new, against=existing)
    assert [r["id"] for r in kept] == ["r-0015", "r-0016", "r-0017", "r-0018", "r-0019"]
    assert all(d.in_against and d.similarity == 1.0 for d in report.dropped)
    assert [d.duplicate_of for d in report.dropped] == [r["id"] for r in existing]


def test_dedup_text_option():
    question = synthetic_texts(1, seed=10)[0]
    records = [rec(1, turns=(question, "First answer, " + synthetic_texts(1, seed=11)[0])),
               rec(2, turns=(question, "Second answer, " + synthetic_texts(1, seed=12)[0]))]
    assert len(dedup.dedup(records)[0]) == 1  # default: the same user request is a duplicate
    assert len(dedup.dedup(records, text="conversation")[0]) == 2
    with pytest.raises(ValueError, match="text must be"):
        dedup.dedup(records, text="assistant")


def test_empty_and_short_texts():
    found = dedup.find_near_duplicates(["", "", "hi", "hi", "hi there", "plan my week now"])
    assert {(i, j) for i, j, _ in found.pairs} == {(2, 3)}


# --------------------------------------------------------------------------- split and export


def topic_records() -> list[dict]:
    sizes = {"deadlines": 40, "habits": 25, "focus": 10, "meetings": 3, "rare": 1}
    return [rec(100 * k + i, topic=t) for k, (t, n) in enumerate(sizes.items()) for i in range(n)]


def test_split_is_deterministic_disjoint_and_stratified():
    records = topic_records()
    splits = ds.split_records(records, seed=1)
    again = ds.split_records(records, seed=1)
    other = ds.split_records(records, seed=2)
    ids = {name: [r["id"] for r in part] for name, part in splits.items()}
    assert ids == {name: [r["id"] for r in part] for name, part in again.items()}
    assert ids != {name: [r["id"] for r in part] for name, part in other.items()}
    assert list(ids) == ["train", "validation", "test"]
    all_ids = [i for part in ids.values() for i in part]
    assert sorted(all_ids) == sorted(r["id"] for r in records)  # disjoint, nothing lost
    count = lambda part, topic: sum(r["topic"] == topic for r in part)
    assert [count(splits[s], "deadlines") for s in ("train", "validation", "test")] == [32, 4, 4]
    assert [count(splits[s], "habits") for s in ("train", "validation", "test")] == [19, 3, 3]
    assert [count(splits[s], "focus") for s in ("train", "validation", "test")] == [8, 1, 1]
    assert all(count(splits["train"], t) >= 1 for t in ("meetings", "rare"))
    order = {r["id"]: k for k, r in enumerate(records)}
    assert all([order[i] for i in part] == sorted(order[i] for i in part) for part in ids.values())
    with pytest.raises(ValueError, match="fractions"):
        ds.split_records(records, fractions=(0.8, 0.3, 0.1))


def test_openai_jsonl_export(tmp_path):
    records = [rec(1), rec(2, turns=("a", "b", "c", "d"))]
    path = ds.to_openai_jsonl(records, tmp_path / "train.jsonl", system_prompt="You are TaskMaster.")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [list(row) for row in rows] == [["messages"], ["messages"]]
    assert rows[0]["messages"] == [{"role": "system", "content": "You are TaskMaster."}, *records[0]["messages"]]
    assert rows[1]["messages"][1:] == records[1]["messages"]
    plain = ds.to_openai_jsonl(records, tmp_path / "plain.jsonl")
    assert json.loads(plain.read_text().splitlines()[0]) == {"messages": records[0]["messages"]}
    # A system prompt on records that already carry one makes an invalid file: nothing written.
    with_system = [{**records[0], "messages": [{"role": "system", "content": "s"}, *records[0]["messages"]]}]
    with pytest.raises(ds.DatasetError, match="role_order"):
        ds.to_openai_jsonl(with_system, tmp_path / "bad.jsonl", system_prompt="You are TaskMaster.")
    assert not (tmp_path / "bad.jsonl").exists()


def test_hf_dataset_export():
    records = [rec(1), rec(2, turns=("a", "b", "c", "d"))]
    data = ds.to_hf_dataset(records, system_prompt="You are TaskMaster.")
    assert len(data) == 2
    assert {"messages", "id", "persona", "topic"} <= set(data.column_names)
    assert data[1]["messages"][0] == {"role": "system", "content": "You are TaskMaster."}
    assert data[1]["messages"][1:] == records[1]["messages"]
    assert ds.to_hf_dataset(records)[0]["messages"] == records[0]["messages"]


# --------------------------------------------------------------------------- figures


def test_dataset_figures_have_data(tmp_path):
    from matplotlib.figure import Figure

    fig = plots.token_length_histogram([10, 20, 30, 300], [5, 10, 12, 200], unit="tokens", max_tokens=256)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert sum(p.get_height() for p in ax.patches) == 8  # 4 examples + 4 assistant lengths
    assert any(list(line.get_xdata()) == [256, 256] for line in ax.lines)

    fig = plots.topic_coverage_bar({"deadlines": 12, "habits": 3, "focus": 8}, min_count=8)
    bars = fig.axes[0].patches
    assert sorted(b.get_width() for b in bars) == [3, 8, 12]
    assert [label.get_text() for label in fig.axes[0].get_yticklabels()] == ["habits", "focus", "deadlines"]

    records = [rec(i, turns=(t, "r")) for i, t in enumerate(synthetic_texts(40, seed=3))]
    records += [rec(100 + i, turns=(perturb(r["messages"][0]["content"], 1, random.Random(i)), "r"))
                for i, r in enumerate(records[:5])]
    _, report = dedup.dedup(records)
    path = tmp_path / "dups.png"
    fig = plots.duplicate_similarity_histogram(report.candidate_similarities, report.threshold, path=path)
    ax = fig.axes[0]
    assert sum(p.get_height() for p in ax.patches) == len(report.candidate_similarities) >= 5
    assert any(list(line.get_xdata()) == [0.7, 0.7] for line in ax.lines)
    assert path.read_bytes().startswith(b"\x89PNG")


def test_lesson_4_trains_on_lesson_2s_split_plus_lesson_3s_conversations(tmp_path):
    from persona_lib import io
    from persona_lib.dataset import chapter_training_data, load_shipped, split_records, split_reserved

    shipped = load_shipped("taskmaster")
    none = chapter_training_data(tmp_path, "taskmaster", validation_fraction=0.1, seed=0)
    assert (none["source"].startswith("the shipped taskmaster conversations")
            and len(none["train"]) + len(none["validation"]) < len(shipped))
    trainable, reserved = split_reserved(shipped)
    splits = split_records(trainable, seed=3)
    for name, part in {**splits, "classifier_reserved": reserved}.items():
        io.write_jsonl(tmp_path / "data" / f"{name}.jsonl", part)
    generated = [{**shipped[0], "id": "gen-0001", "source": "generated"}]
    io.write_jsonl(tmp_path / "data" / "merged.jsonl", shipped + generated)
    got = chapter_training_data(tmp_path, "taskmaster", validation_fraction=0.1, seed=0)
    assert [r["id"] for r in got["train"]] == [r["id"] for r in splits["train"]] + ["gen-0001"]
    assert got["validation"] == splits["validation"] and "+ 1 from lesson 3" in got["source"]


def test_the_plain_chat_format_loads_for_the_persona_being_loaded(tmp_path):
    """`{"messages": [...]}` per line (OpenAI's and Hugging Face's format): persona and ids are
    filled in, topic is optional; anything else wrong is still reported by line."""
    import json

    from persona_lib.dataset import DatasetError, load_records

    path = tmp_path / "my_coach.jsonl"
    chat = [{"role": "user", "content": "Help me plan."}, {"role": "assistant", "content": "First, pick one task."}]
    path.write_text(json.dumps({"messages": chat}) + "\n" + json.dumps({"messages": chat, "topic": "planning"}) + "\n")
    records = load_records(path, persona="coach_quill")
    assert [(r["id"], r["persona"], r["topic"], r["source"]) for r in records] == [
        ("my_coach-0001", "coach_quill", "unlabelled", "imported"),
        ("my_coach-0002", "coach_quill", "planning", "imported")]
    path.write_text(json.dumps({"messages": chat[:1]}) + "\n")
    with pytest.raises(DatasetError, match=r"my_coach.jsonl:1"):
        load_records(path, persona="coach_quill")
