"""The shipped persona data (persona_data/) meets the bar the notebooks rely on: valid,
big enough after dedup, varied, not a single template, and with evaluation sets that do not
leak into training."""

from functools import cache

import pytest

from persona_lib import dataset as ds
from persona_lib import dedup
from persona_lib.paths import data_dir
from persona_lib.spec import load_spec
from persona_lib.train import TrainConfig

PERSONAS = ("taskmaster", "captain_codebeard", "zen_coder")
MIN_CONVERSATIONS = {"taskmaster": 200, "captain_codebeard": 100, "zen_coder": 100}
# Every shipped conversation fits the training length whole, so no reply loses its ending:
# TrainConfig's max_seq_length (the CPU path's and the T4 preset's), counted with SmolLM2's
# tokenizer and chat template. That template adds its default system prompt, which is longer
# than the conditioned adapter's "You are <name>." (lesson 6), so the count is an upper bound.
MAX_TOKENS = TrainConfig().max_seq_length


@pytest.fixture(scope="module")
def tokenizer():
    from persona_lib.models import load_tokenizer

    return load_tokenizer("tiny")


@cache
def deduped(slug: str) -> list[dict]:
    """A persona's shipped conversations after near-duplicate removal."""
    return dedup.dedup(ds.load_shipped(slug))[0]


def replies(records: list[dict]) -> list[str]:
    return [m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"]


@pytest.mark.parametrize("slug", PERSONAS)
def test_training_data_is_valid(slug, tokenizer):
    path = data_dir() / f"{slug}.jsonl"
    problems = ds.check_file(path, slug, personas=PERSONAS, tokenizer=tokenizer, max_tokens=MAX_TOKENS)
    assert problems == [], "\n".join(map(str, problems))


@pytest.mark.parametrize("slug", PERSONAS)
def test_enough_varied_conversations(slug):
    records = deduped(slug)
    assert len(records) >= MIN_CONVERSATIONS[slug]
    assert ds.distinct_n(replies(records), 2) >= 0.30


def test_taskmaster_is_multi_turn_and_covers_its_topics():
    stats = ds.dataset_stats(deduped("taskmaster"))
    assert stats["multi_turn_share"] >= 0.2
    well_covered = [topic for topic, n in stats["topics"].items() if n >= 8]
    assert len(well_covered) >= 12, stats["topics"]


@pytest.mark.parametrize("slug", PERSONAS)
def test_signature_phrases_are_seasoning_not_a_template(slug):
    vocabulary = {slug: load_spec(slug).signature_vocabulary}
    coverage = ds.dataset_stats(deduped(slug), signature_vocabulary=vocabulary)["personas"][slug]["signature_coverage"]
    overused = {phrase: share for phrase, share in coverage.items() if share > 0.25}
    assert not overused, f"phrases in more than 25% of replies: {overused}"


@pytest.mark.parametrize("slug", PERSONAS)
def test_heldout_prompts(slug):
    heldout = ds.load_heldout(slug)
    assert len(heldout) >= 40
    assert {r["kind"] for r in heldout} == set(ds.HELDOUT_KINDS)
    # No held-out prompt may be a near-copy of a training prompt (the model would have seen it).
    _, report = dedup.dedup(heldout, against=ds.load_shipped(slug))
    assert report.dropped == [], "\n".join(map(str, report.dropped))


@pytest.mark.parametrize("slug", PERSONAS)
def test_dialogues_are_long_enough(slug):
    dialogues = ds.load_dialogues(slug)
    assert dialogues
    short = [d["id"] for d in dialogues if len(d["user_turns"]) < 5]
    assert not short, f"dialogues with fewer than 5 user turns: {short}"


def test_knowledge_set():
    questions = ds.load_knowledge()
    facts = [f for q in questions for f in q["facts"]]
    assert len(questions) >= 30
    assert len(facts) >= 100
    assert all(f["accept"] and all(a.strip() for a in f["accept"]) for f in facts)
    assert [q["id"] for q in questions] == [f"kn-{k:02d}" for k in range(1, len(questions) + 1)]
