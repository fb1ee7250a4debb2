"""The evaluation stage end to end on the tiny model, with adapters made here with PEFT and
scripted judge servers on loopback."""

import json
from pathlib import Path

import pytest

from judge_servers import ObeysOutsideFence, PrefersFirst, PrefersVoice
from persona_lib import evaluate as ev
from persona_lib.judge import Judge, JudgeConfig
from persona_lib.metrics import train_persona_classifier


def make_adapter(path: Path, *, identity: bool) -> Path:
    """A LoRA adapter on the tiny model; identity=True leaves B at zero (tuned == base)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from persona_lib.models import load_model

    model, tokenizer = load_model("tiny")
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                        init_lora_weights=identity, task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def classifier():
    """A quick classifier on synthetic voices (the shipped one takes ~10 s and is tested in test_metrics)."""
    def records(persona, words):
        return [{"id": f"{persona}-{k}", "persona": persona, "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": " ".join(words[(k + i) % len(words)] for i in range(8))}]}
            for k in range(12)]
    return train_persona_classifier(records("taskmaster", "plan next step focus block momentum win list".split())
                                    + records("captain_codebeard", "arr matey ship crew code plank sail ye".split()),
                                    folds=3)


def test_spread_keeps_every_kind_and_the_original_order():
    records = [{"id": k, "kind": kind} for k, kind in enumerate(["ordinary"] * 10 + ["ooc"] * 3 + ["multiturn"] * 2)]
    picked = ev.spread(records, 4, seed=0)
    assert {r["kind"] for r in picked} == {"ordinary", "ooc", "multiturn"} and len(picked) == 4
    assert [r["id"] for r in picked] == sorted(r["id"] for r in picked)
    assert picked == ev.spread(records, 4, seed=0) and ev.spread(records, None, seed=0) == records


def test_config_is_validated_and_presets_fit_their_budgets():
    with pytest.raises(ValueError, match="judge_systems"):
        ev.EvalConfig(judge_systems=("tuned", "finetuned"))
    with pytest.raises(ValueError, match="max_prompts"):
        ev.EvalConfig(max_prompts=0)
    with pytest.raises(ValueError, match="must include base_prompted and tuned"):
        ev.EvalConfig(systems=("base", "tuned"), pairwise_against=("base",))
    with pytest.raises(ValueError, match="add them to `systems`"):
        ev.EvalConfig(systems=ev.HEADLINE)  # the default pairwise comparison needs base
    quick = ev.EvalConfig(systems=("tuned", "base_prompted"), pairwise_against=("base_prompted",))
    assert quick.systems == ev.HEADLINE and quick.judge_systems == ev.HEADLINE  # SYSTEMS order; judge follows
    assert ev.EvalConfig().judge_systems == ev.SYSTEMS
    smoke = ev.EvalConfig.smoke()
    assert smoke.judge_prompts * len(smoke.judge_systems) <= JudgeConfig.smoke().max_calls
    assert smoke.pairwise_against == () and ev.EvalConfig.local_judge().pairwise_against == ("base_prompted",)


def _judge_report(tuned_scores, base_scores):
    rows = lambda scores: [{"id": k, "overall": x, "error": None} for k, x in enumerate(scores)]  # noqa: E731
    from persona_lib.metrics import paired_bootstrap

    return {"used": True, "verdicts": {"tuned": rows(tuned_scores), "base_prompted": rows(base_scores)},
            "paired_overall": {"tuned_vs_base_prompted": paired_bootstrap(base_scores, tuned_scores, n_boot=200)}}


def test_the_judge_decides_the_persona_target_only_when_informative():
    assert ev.judge_informative(_judge_report([3, 4, 4, 5, 4], [2, 3, 3, 4, 3])) == (True, "ok")
    constant = ev.judge_informative(_judge_report([2.3] * 6, [2.3] * 6))
    assert constant == (False, "the judge gave every reply the same scores")
    assert not ev.judge_informative(_judge_report([3, 4], [2, 3]))[0]
    assert ev.judge_informative({"used": False, "why": "no judge given"}) == (False, "no judge given")


def test_the_judge_must_tell_the_voice_from_its_absence_before_it_decides(classifier):
    """Calibration: known in-persona replies against generic ones, both orders. A judge that
    sees the voice passes; one that always picks the first reply shown ties every pair and
    fails, and then cannot decide the target however its scores vary."""
    spec = ev.load_spec("taskmaster")
    items = [([{"role": "user", "content": f"question {k}"}], f"plan next step focus block momentum VOICE {k}")
             for k in range(6)]
    generic = [f"Here is some general information about topic {k}." for k in range(6)]
    config = ev.EvalConfig.smoke(judge_calibration=6)
    with PrefersVoice("VOICE") as good, PrefersFirst() as biased:
        passed = ev.calibrate_judge(Judge(JudgeConfig(model="good"), base_url=good.base_url), spec, items, generic,
                                    classifier, config)
        failed = ev.calibrate_judge(Judge(JudgeConfig(model="biased"), base_url=biased.base_url), spec, items,
                                    generic, classifier, config)
    assert passed["passed"] and passed["judge_ranks_persona_first"]["mean"] == 1.0 and passed["why"] == "ok"
    assert passed["agrees_with_classifier"]["share"] == 1.0  # the classifier ranks these pairs the same way
    assert not failed["passed"] and failed["judge_ranks_persona_first"]["mean"] == 0.5
    assert all(v["consistent"] is False for v in failed["verdicts"])  # the order decided, not the reply
    report = {**_judge_report([3, 4, 4, 5, 4], [2, 3, 3, 4, 3]), "calibration": failed}
    decides, why = ev.judge_informative(report)
    assert not decides and why.startswith("the judge failed its calibration")
    assert ev.judge_informative({**report, "calibration": passed}) == (True, "ok")


def test_calibration_items_are_the_specs_examples_then_the_reserved_slice():
    spec = ev.load_spec("taskmaster")
    items = ev.calibration_items(spec, 12)
    assert [reply for _, reply in items[:len(spec.examples)]] == [ex["assistant"] for ex in spec.examples]
    assert len(items) == 12 and all(conv[-1]["role"] == "user" for conv, _ in items)


def test_loading_names_the_missing_adapter(tmp_path):
    from persona_lib import adapters

    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        adapters.load(tmp_path, "tiny")


def test_the_adapter_is_switched_off_for_base_answers_and_on_for_tuned(tmp_path, tiny, tiny_path):
    from persona_lib import adapters
    from persona_lib.chat import generate_replies
    from persona_lib.spec import load_spec

    adapter = make_adapter(tmp_path / "adapter", identity=False)
    assert adapters.base_model(adapter) == tiny_path
    model, tokenizer = adapters.load(adapter, "tiny")
    conversations = [[{"role": "user", "content": "Plan my Monday."}], [{"role": "user", "content": "Add dentist."}]]
    gen = ev.Generator(model, tokenizer, load_spec("taskmaster"), tmp_path / "cache", "fp",
                       ev.EvalConfig.smoke(max_new_tokens=6))
    base = gen.replies("base", conversations, 6, "heldout")
    tuned = gen.replies("tuned", conversations, 6, "heldout")
    config = gen.config
    plain = generate_replies(tiny[0], tiny[1], conversations, max_new_tokens=6, progress=False,
                             decoding=config.decoding)  # every system decodes alike: the chat default
    assert config.decoding == ev.CHAT and base == plain and tuned != base
    assert gen.replies("tuned", conversations, 6, "heldout") == tuned and gen.generated == 4  # second call: cache
    # A retrained adapter (another fingerprint) on the same base and tokenizer: the base replies come
    # from the cache, the tuned ones are made again.
    retrained = ev.Generator(model, tokenizer, load_spec("taskmaster"), tmp_path / "cache", "fp-retrained", config,
                             base_fingerprint="fp")
    assert retrained.replies("base", conversations, 6, "heldout") == base and retrained.generated == 0
    assert retrained.replies("tuned", conversations, 6, "heldout") == tuned and retrained.generated == 2


def test_placeholder_adapter_is_a_loadable_peft_folder(tmp_path, tiny_path):
    from persona_lib import adapters

    adapter = adapters.placeholder(tmp_path / "eval" / "placeholder_adapter", "tiny")
    assert (adapter / "adapter_config.json").is_file() and (adapter / "tokenizer.json").is_file()
    assert adapters.base_model(adapter) == tiny_path and adapters.trained_on(adapter, "tiny")
    model, _ = adapters.load(adapter)
    assert any("lora_B" in n and p.abs().max() > 0 for n, p in model.named_parameters())  # it changes outputs
    assert not list((tmp_path / "eval").glob(".placeholder_adapter.*"))  # no temp folder left behind


@pytest.mark.slow
def test_evaluate_writes_the_full_report_and_resumes(tmp_path, classifier):
    """Identity adapter (tuned == base), a judge with no opinions and a second one that always
    prefers the first reply: every comparison must come out even, and a rerun must not generate
    or judge again."""
    adapter = make_adapter(tmp_path / "adapter", identity=True)
    out = tmp_path / "eval"
    config = ev.EvalConfig.smoke(judge_prompts=2, judge_systems=("base_prompted", "tuned"),
                                 pairwise_against=("base", "base_prompted"), judge_drift=True, judge_calibration=2)
    with ObeysOutsideFence(default_score=2) as one, PrefersFirst(default_score=2) as two:
        judges = lambda: (Judge(JudgeConfig(model="one", concurrency=1), base_url=one.base_url, name="one"),  # noqa: E731
                          Judge(JudgeConfig(model="two"), base_url=two.base_url, name="two"))
        first, second = judges()
        report = ev.evaluate("taskmaster", "tiny", adapter, out, config, judge=first, second_judge=second,
                             classifier=classifier)
        requests = (len(one.requests), len(two.requests))
        again = ev.evaluate("taskmaster", None, adapter, out, config, judge=judges()[0], second_judge=judges()[1],
                            classifier=classifier)
        assert (len(one.requests), len(two.requests)) == requests  # everything came from the caches
    # Identical questions (tuned == base here) are asked once and answered from the cache:
    usage = report["judge"]["usage"]
    assert [u["requests"] for u in usage] == list(requests)
    # rubric, pairwise x 2 orders, drift, calibration pairs x 2 orders
    assert usage[0]["requests"] + usage[0]["cached"] == 2 * 2 + 2 * 2 * 2 + 2 + 2 * 2
    assert usage[1]["requests"] + usage[1]["cached"] == 2 * 2 and usage[0]["cost_usd"] == 0.0
    assert again["timing"]["replies_generated"] == 0 and report["timing"]["replies_generated"] > 0

    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["tuned"] == r["base"] and r["tuned_prompted"] == r["base_prompted"] for r in rows)
    assert report["paired"]["tuned_vs_base"]["diff"] == 0 and report["knowledge"]["difference_pp"]["diff"] == 0
    judge = report["judge"]
    assert judge["used"] and judge["prompts"] == [v["id"] for v in judge["verdicts"]["tuned"]]
    assert judge["rubric"]["tuned"]["overall"]["mean"] == 2.0 and set(judge["rubric"]) == {"base_prompted", "tuned"}
    assert all(v["rationales"] for v in judge["verdicts"]["tuned"])
    assert {k: v["mean"] for k, v in judge["pairwise"].items()} == {"tuned_vs_base": 0.5, "tuned_vs_base_prompted": 0.5}
    assert judge["second_judge"]["agreement"]["exact"] == 1.0
    assert report["drift"]["tuned"]["turns"] == 5 and "judge_last_turn" in report["drift"]["tuned"]
    calibration = judge["calibration"]  # a judge with no opinions cannot tell the voice from its absence
    assert (calibration["pairs"] == 2 and not calibration["passed"]
            and "ranked the in-persona reply first" in calibration["why"])
    pc = report["targets"]["persona_consistency"]  # 2 judged prompts cannot decide it: the classifier does
    assert pc["measure"] == "persona-classifier probability" and not pc["judge_decides"]
    assert "fewer than 5" in pc["judge_not_used_because"] and pc["by_judge"]["diff"] == 0.0
    assert again == json.loads((out / "report.json").read_text())  # the file holds the latest run
    for name in ("persona_measures", "trait_scores", "win_rates", "lengths", "persona_probabilities", "drift",
                 "knowledge"):
        assert (out / report["figures"][name]).stat().st_size > 5000
    summary = (out / "summary.md").read_text()
    assert "## Targets" in summary and "Win rate tuned vs base" in summary and "Second judge two" in summary


def test_lesson_1s_before_answers_meet_the_tuned_ones(tmp_path):
    from persona_lib import io
    from persona_lib.evaluate import before_and_after

    assert before_and_after(tmp_path) == []
    io.write_jsonl(tmp_path / "spec" / "before.jsonl", [
        {"id": "tm-eval-001", "prompt": "Plan my day.", "model": "embedded", "base": "As a chatbot...",
         "base_with_persona_prompt": "Let's plan!"},
        {"id": "tm-eval-002", "prompt": "Hi", "model": "embedded", "base": "Hello", "base_with_persona_prompt": "Hey"}])
    io.write_jsonl(tmp_path / "eval" / "answers.jsonl", [
        {"id": "tm-eval-001", "kind": "ordinary", "prompt": "Plan my day.", "base_prompted": "x",
         "tuned": "First, ..."}])
    assert before_and_after(tmp_path) == [{"id": "tm-eval-001", "prompt": "Plan my day.", "before": "As a chatbot...",
                                           "before_with_prompt": "Let's plan!", "tuned": "First, ..."}]
