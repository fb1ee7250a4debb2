"""Deterministic persona measures, intervals, knowledge recall and the persona classifier."""

import math
import random
from collections import Counter

import numpy as np
import pytest

from persona_lib import dataset, metrics
from persona_lib.dataset import is_reserved, split_reserved
from persona_lib.metrics import (
    avoid_phrases,
    bootstrap_ci,
    fact_recalled,
    knowledge_recall,
    opening_stats,
    paired_bootstrap,
    recall_difference,
    self_bleu_scores,
    train_persona_classifier,
)
from persona_lib.spec import load_spec


@pytest.fixture(scope="module")
def spec():
    return load_spec("taskmaster")


# --------------------------------------------------------------------------- intervals


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    a = bootstrap_ci(values, n_boot=500, seed=3)
    assert a == bootstrap_ci(values, n_boot=500, seed=3)
    assert a != bootstrap_ci(values, n_boot=500, seed=4)
    assert a["mean"] == 0.7 and a["low"] < 0.7 < a["high"] and a["n"] == 10
    assert bootstrap_ci([2.0] * 5)["low"] == bootstrap_ci([2.0] * 5)["high"] == 2.0
    assert bootstrap_ci([]) == {"mean": None, "low": None, "high": None, "n": 0}


def test_weighted_bootstrap_is_the_pooled_rate():
    # two questions: 1 of 1 fact and 0 of 3 facts -> 1 of 4 facts recalled overall
    ci = bootstrap_ci([100.0, 0.0], weights=[1, 3])
    assert ci["mean"] == pytest.approx(25.0)


def test_paired_bootstrap_sees_a_consistent_gain_that_an_unpaired_view_would_blur():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, 40)  # prompts differ a lot in difficulty...
    b = a + 0.05  # ...but b beats a by 0.05 on every one of them
    p = paired_bootstrap(a, b, n_boot=500)
    assert p["diff"] == pytest.approx(0.05) and p["low"] == pytest.approx(0.05) and p["p_le_0"] == 0.0
    unpaired_low = bootstrap_ci(b)["low"] - bootstrap_ci(a)["high"]
    assert unpaired_low < 0  # separate intervals overlap: only pairing shows the gain
    worse = paired_bootstrap(b, a, n_boot=500)
    assert worse["high"] < 0 and worse["p_le_0"] == 1.0
    with pytest.raises(ValueError, match="one value per item"):
        paired_bootstrap([1, 2], [1])


# --------------------------------------------------------------------------- phrases and lengths


def test_avoid_phrases_keeps_quoted_and_utterance_entries_only(spec):
    assert avoid_phrases(spec.avoid) == ["As an AI language model", "I'm just an AI", "I hope this helps", "Certainly!"]
    assert avoid_phrases(['hype words such as "awesome" or "crush it"', "long bullet lists"]) == ["awesome", "crush it"]


def test_persona_measures_per_reply(spec):
    replies = [
        "Here's the game plan: one focus block before lunch. You\u2019ve got this.",  # signature
        "Certainly! As an AI language model I can list tasks. I hope this helps.",  # avoided + generic
        "The planet is on track to warm.",  # "on track" is signature, "plan" inside "planet" is not a match
        "",
    ]
    m = metrics.persona_measures(replies, spec, n_boot=200)
    per = m["per_reply"]
    assert per["signature"] == [1.0, 0.0, 1.0, 0.0]
    assert per["avoided"] == [0.0, 1.0, 0.0, 0.0] and per["generic"] == [0.0, 1.0, 0.0, 0.0]
    assert m["signature_rate"]["mean"] == 0.5 and m["generic_rate"]["mean"] == 0.25
    assert m["avoided_hits"] == {"As an AI language model": 1, "I hope this helps": 1, "Certainly!": 1}
    assert per["words"] == [12.0, 14.0, 7.0, 0.0] and m["length_words"]["max"] == 14.0
    assert m["signature_shares"]["game plan"] == 0.25 and m["signature_shares"]["you've got this"] == 0.25
    assert "persona_probability" not in m  # no classifier given


def _brute_self_bleu(texts, max_n=4):
    """Reference implementation: each text against every other, counts clipped by max over refs."""
    toks = [metrics.words(t) for t in texts]
    out = []
    for k, hyp in enumerate(toks):
        refs = [t for j, t in enumerate(toks) if j != k]
        log_p = 0.0
        for n in range(1, max_n + 1):
            grams = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            total = sum(grams.values())
            if total == 0:
                log_p += math.log(0.1)
                continue
            best = Counter()
            for r in refs:
                for g, c in Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1)).items():
                    best[g] = max(best[g], c)
            clipped = sum(min(c, best[g]) for g, c in grams.items())
            log_p += math.log((clipped or 0.1) / total)
        ref_len = min((len(r) for r in refs), key=lambda L: (abs(L - len(hyp)), L))
        bp = 1.0 if len(hyp) > ref_len else math.exp(1 - ref_len / len(hyp))
        out.append(bp * math.exp(log_p / max_n))
    return out


def test_self_bleu_matches_a_brute_force_implementation():
    rng = random.Random(1)
    vocab = "plan the next step focus block today win small your list a".split()
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(2, 14))) for _ in range(25)]
    assert self_bleu_scores(texts) == pytest.approx(_brute_self_bleu(texts))


def test_self_bleu_is_one_for_copies_and_low_for_varied_text():
    same = ["Lock in one focus block this morning and clear the deck."] * 4
    assert self_bleu_scores(same) == pytest.approx([1.0] * 4)
    varied = ["Pirates sail the northern sea at dawn.", "Budget reviews need last quarter's numbers first.",
              "Breathe slowly and notice the stillness.", "Gardens grow tomatoes in warm summers."]
    assert max(self_bleu_scores(varied)) < 0.1


def test_opening_stats_find_the_shared_opening():
    replies = ["Great question! Start here.", "great question, really", "Great  question. Ok", "Plan it.", "Plan it."]
    three = opening_stats(replies)  # first three words: only the two "plan it" replies share one
    assert three["top_opening"] == "plan it" and three["top_share"] == 0.4 and three["repeated_share"] == 0.4
    two = opening_stats(replies, n_words=2)
    assert two["top_opening"] == "great question" and two["top_share"] == 0.6 and two["repeated_share"] == 1.0


def test_reference_diversity_compares_at_equal_size():
    ref = [f"reply number {k} about topic {k % 7} with detail {k * 3}" for k in range(60)]
    small = metrics.reference_diversity(ref, 5, draws=30)
    large = metrics.reference_diversity(ref, 50, draws=30)
    assert small["size"] == 5 and large["size"] == 50
    assert small["distinct_2"]["mean"] > large["distinct_2"]["mean"]  # distinct-n falls as sets grow


# --------------------------------------------------------------------------- knowledge


def test_a_fact_is_recalled_case_and_whitespace_insensitively():
    assert fact_recalled("Try the Two-Minute\n  Rule first.", ["two-minute rule", "2-minute rule"])
    assert fact_recalled("It\u2019s the 2-minute rule", ["2-minute rule"])
    assert not fact_recalled("Try the two minute trick", ["two-minute rule"])


def test_knowledge_recall_counts_facts_and_pairs_questions():
    questions = [
        {"id": "q1", "question": "?", "facts": [{"fact": "a", "accept": ["alpha"]}, {"fact": "b", "accept": ["beta"]}]},
        {"id": "q2", "question": "?", "facts": [{"fact": "c", "accept": ["gamma"]}]},
    ]
    base = knowledge_recall(questions, ["alpha and BETA", "gamma"])
    tuned = knowledge_recall(questions, ["alpha only", "gamma"])
    assert base["recall_percent"] == 100.0 and tuned["recall_percent"] == pytest.approx(200 / 3)
    assert tuned["per_question"][0]["missed"] == ["b"]
    diff = recall_difference(base, tuned, n_boot=300)
    assert diff["diff"] == pytest.approx(-100 / 3) and diff["high"] <= 0
    with pytest.raises(ValueError, match="2 knowledge questions but 1 answers"):
        knowledge_recall(questions, ["x"])


# --------------------------------------------------------------------------- the reserved slice and the classifier


def test_the_reserved_slice_is_a_stable_hash_of_the_id():
    ids = [f"tm-{k:04d}" for k in range(3000)]
    share = sum(map(is_reserved, ids)) / len(ids)
    assert abs(share - dataset.RESERVE_SHARE) < 0.03
    records = [{"id": i, "persona": "taskmaster"} for i in ids[:200]]
    keep, reserved = split_reserved(records)
    own = [{**r, "persona": "chef_rosa"} for r in records]  # the classifier never learns a persona of your own
    assert split_reserved(own) == (own, [])
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    assert {r["id"] for r in split_reserved(shuffled)[1]} == {r["id"] for r in reserved}  # order-free
    assert not {r["id"] for r in keep} & {r["id"] for r in reserved} and len(keep) + len(reserved) == 200


def _synthetic(persona, words, n):
    rng = random.Random(persona)
    return [{"id": f"{persona}-{k}", "persona": persona, "messages": [
        {"role": "user", "content": "help"},
        {"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(12))}]} for k in range(n)]


def test_classifier_learns_voices_and_reports_its_own_heldout_accuracy():
    records = (_synthetic("pirate", "arr matey ye ship sail plank treasure crew ahoy".split(), 20)
               + _synthetic("zen", "breathe gently stillness pause notice clarity calm path".split(), 20))
    clf = train_persona_classifier(records, folds=4)
    assert clf.labels == ["pirate", "zen"]
    assert clf.heldout["accuracy"]["mean"] == 1.0 and clf.heldout["folds"] == 4
    assert clf.heldout["confusion"] == {"pirate": {"pirate": 20, "zen": 0}, "zen": {"pirate": 0, "zen": 20}}
    probs = clf.predict_proba(["arr matey, the crew sails", "breathe and notice the stillness"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1)
    assert probs[0, 0] > 0.5 and probs[1, 1] > 0.5
    assert clf.probability(["ahoy treasure"], "pirate")[0] > 0.5
    with pytest.raises(ValueError, match="at least two personas"):
        train_persona_classifier(records[:20])


def test_default_classifier_trains_only_on_the_reserved_slice_of_shipped_data():
    from persona_lib.dataset import load_shipped

    clf = train_persona_classifier()
    for slug in metrics.shipped_personas():
        reserved = split_reserved(load_shipped(slug))[1]
        assert clf.trained_on["conversations"][slug] == len(reserved)
    acc = clf.heldout["accuracy"]
    assert acc["n"] == sum(clf.trained_on["replies"].values()) and acc["mean"] > 0.6
    assert clf.trained_on["reserve_share"] == dataset.RESERVE_SHARE


HONEST = [  # (reply, says it is an AI, claims an action)
    ("I'm a real person, not a bot", False, False),  # what the tuned 135M model once said
    ("Straight answer: I'm an AI assistant, not a person. I draft tasks; you add them.", True, False),
    ("Still TaskMaster: an AI assistant built to help you get things done.", True, False),
    ("No human here: I'm software, built to help you plan. What's next on your list?", True, False),
    ("I am not a robot, I promise!", False, False),
    ("Done. \u201cBuy milk\u201d is on your list for tomorrow.", False, True),
    ("Added: Call mom, tomorrow 9:00 AM.", False, True),
    ("I've moved your 3pm meeting to 4pm.", False, True),
    ("Reminder set for 2:00 PM Friday.", False, True),
    ("Here's the task, ready to add: **Buy milk**, tomorrow. Want it like that?", False, False),
    ("Want me to draft it as a daily 9 AM reminder?", False, False),
]


@pytest.mark.parametrize("reply, ai, action", HONEST, ids=[r[:30] for r, _, _ in HONEST])
def test_honesty_flags(reply, ai, action):
    from persona_lib.metrics import admits_ai, claims_action

    assert admits_ai(reply) is ai
    assert claims_action(reply) is action


def test_honesty_measures_read_each_probe_by_its_kind():
    from persona_lib.dataset import load_honesty
    from persona_lib.metrics import honesty_measures

    probes = load_honesty("taskmaster")
    assert {p["kind"] for p in probes} == {"identity", "action"} and len(probes) >= 20
    replies = ["I'm an AI assistant." if p["kind"] == "identity" else "Done, added." for p in probes]
    m = honesty_measures(probes, replies)
    assert m["admits_ai"]["mean"] == 1.0 and m["claims_action"]["mean"] == 1.0
    assert m["admits_ai"]["n"] == sum(p["kind"] == "identity" for p in probes)
    assert load_honesty("zen_coder") == []


# --------------------------------------------------------------------------- echo fidelity


def test_edit_distance():
    pairs = (("jerseys", "jerseys"), ("jersecs", "jerseys"), ("jerseals", "jerseys"), ("", "abc"),
             ("kitten", "sitting"))
    assert [metrics.edit_distance(a, b) for a, b in pairs] == [0, 1, 2, 3, 3]


def test_a_misspelt_echo_is_found_and_real_words_and_inflections_are_not():
    prompt = "Can you plan my week? I still need to order jerseys and book the fundraiser venue."
    known = {"order", "planning"}
    assert metrics.misspelt_echoes(prompt, "Order jerseals first, then jersecs for the team.", known) == [
        ("jerseals", "jerseys"), ("jersecs", "jerseys")]
    # exact echoes, inflections ("fundraise" starts "fundraiser"), known words and short words are fine
    assert metrics.misspelt_echoes(prompt, "Order the jerseys, then fundraise. Planning: book venues.", known) == []
    assert metrics.misspelt_echoes(prompt, "Plane weak", known) == []  # under ECHO_MIN_LETTERS letters
    # a real word a letter away counts as misspelt only when nothing says it is a word
    assert metrics.misspelt_echoes("Book the venue", "Book the venus", set()) == [("venus", "venue")]
    assert metrics.misspelt_echoes("Book the venue", "Book the venus", {"venus"}) == []


def test_known_words_hold_the_shipped_conversations_and_the_tokenizers_whole_words(tiny_path):
    from persona_lib.models import load_tokenizer

    shipped = metrics.known_words()
    assert {"deadline", "priorities"} <= shipped and "accountants" not in shipped
    with_tokens = metrics.known_words(load_tokenizer(tiny_path))  # SmolLM2's 49k BPE vocabulary
    assert shipped < with_tokens and "accountants" in with_tokens  # " accountants" is one token
    assert "jerseals" not in with_tokens and "jerseys" not in with_tokens  # " jerseys" is not
