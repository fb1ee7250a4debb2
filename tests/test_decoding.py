"""Decoding guards: the settings object, the loop measure, the benchmark's choice rule and the
chat default it must match."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from persona_lib.chat import CHAT, GREEDY, Decoding, generate_replies
from persona_lib.metrics import loops, most_repeated

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import bench_decoding  # noqa: E402


def test_decoding_settings_reach_generate_only_when_on():
    assert GREEDY.generate_kwargs() == {} and GREEDY.label == "greedy"
    both = Decoding(repetition_penalty=1.2, no_repeat_ngram_size=4)
    assert both.generate_kwargs() == {"repetition_penalty": 1.2, "no_repeat_ngram_size": 4}
    assert both.label == "greedy, repetition penalty 1.2, no repeated 4-grams"
    with pytest.raises(ValueError, match="repetition_penalty"):
        Decoding(repetition_penalty=0.9)
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        Decoding(no_repeat_ngram_size=-1)


def test_no_repeat_ngrams_stop_a_loop_the_greedy_reply_has(tiny):
    model, tokenizer = tiny
    conversations = [[{"role": "user", "content": "plan my week"}], [{"role": "user", "content": "hi"}]]
    kw = dict(max_new_tokens=40, progress=False)
    # the random-init tiny model repeats itself under greedy decoding; two-token n-grams may not repeat
    guarded = generate_replies(model, tokenizer, conversations, decoding=Decoding(no_repeat_ngram_size=2), **kw)
    ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in guarded]
    for row in ids:
        pairs = list(zip(row, row[1:]))
        # decoding and re-encoding can merge tokens, so allow the odd one; a loop repeats many
        assert len(pairs) - len(set(pairs)) <= 2, row
    greedy = generate_replies(model, tokenizer, conversations, **kw)
    assert greedy != guarded


def test_loops_flags_a_repeated_trigram_not_a_catchphrase():
    assert most_repeated("one two") == 0
    assert loops("- Fundraiser Gala: 418 Mercer St\n" * 3)
    assert not loops("Small step, big win. Let's knock this out: a small step today is a win.")
    assert loops("I'm just a task assistant. I'm just a helper. I'm just a planner.")


def _diff(d, low, high):
    return {"diff": d, "low": low, "high": high, "n": 10, "p_le_0": 0.5}


def test_the_rule_takes_the_lowest_loop_rate_without_a_measured_loss():
    calm = {"tuned.loops": _diff(-0.3, -0.5, -0.1), "tuned.signature": _diff(-0.05, -0.2, 0.1),
            "base_prompted.signature": _diff(0.0, -0.1, 0.1), "tuned.knowledge": _diff(-1, -5, 3)}
    lossy = {**calm, "tuned.loops": _diff(-0.5, -0.7, -0.3), "tuned.persona_probability": _diff(-0.1, -0.2, -0.01)}
    noisy = {**calm, "tuned.loops": _diff(-0.1, -0.3, 0.05)}
    def rates(tuned, prompted):
        return {"tuned": {"loop_rate": {"mean": tuned}}, "base_prompted": {"loop_rate": {"mean": prompted}}}

    rows = {"penalty_1.1": rates(0.3, 0.1), "penalty_1.3": rates(0.1, 0.0), "no_repeat_3": rates(0.5, 0.5),
            "penalty_1.2": rates(0.2, 0.2), "no_repeat_4": rates(0.0, 0.4)}
    chosen, reasons = bench_decoding.choose({"penalty_1.1": calm, "penalty_1.3": lossy, "no_repeat_3": noisy}, rows)
    assert chosen == "penalty_1.1"
    assert "tuned.persona_probability" in reasons[1] and "not lowered" in reasons[2]
    assert bench_decoding.choose({"penalty_1.3": lossy}, rows)[0] == "greedy"
    # loops over both systems decide, then the milder setting of two equals
    assert bench_decoding.choose({"no_repeat_4": calm, "penalty_1.2": calm, "penalty_1.1": calm},
                                 rows)[0] == "penalty_1.1"
    assert bench_decoding.choose({"no_repeat_4": calm, "penalty_1.2": calm}, rows)[0] == "penalty_1.2"


def test_the_chat_default_is_the_setting_the_benchmark_chose():
    report = json.loads((ROOT / "bench" / "results" / "decoding.json").read_text())
    assert CHAT == Decoding(**bench_decoding.SETTINGS[report["chosen"]])
    assert report["chosen"] in report["settings"] and report["prompts"] >= 20


def test_the_benchmark_runs_end_to_end_on_the_tiny_model(tmp_path):
    from persona_lib.adapters import placeholder

    adapter = placeholder(tmp_path / "adapter")
    out = tmp_path / "decoding.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_decoding.py"), "--adapter", str(adapter), "--prompts", "2",
         "--questions", "2", "--max-new-tokens", "6",
         "--knowledge-max-new-tokens", "6", "--settings", "greedy,no_repeat_3", "--results", str(out)],
        cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["settings"]) == {"greedy", "no_repeat_3"} and report["chosen"] in report["settings"]
    assert set(report["vs_greedy"]["no_repeat_3"]) >= {"tuned.loops", "base_prompted.loops", "tuned.knowledge"}
    refused = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_decoding.py"), "--adapter",
                              str(tmp_path / "none")], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "persona run taskmaster" in refused.stderr
