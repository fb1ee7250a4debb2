"""Several personas on one base: switching without reloading, blending, routing, bleed matrices."""

import pytest
import torch

from persona_lib import multi
from persona_lib.adapters import trained_on
from persona_lib.dataset import load_shipped, split_reserved
from persona_lib.metrics import train_persona_classifier


def make_adapter(folder, seed: int, r: int = 4):
    """A random, non-zero LoRA adapter on the tiny model (PEFT's init_lora_weights=False: B is
    not zero, so every adapter changes the output)."""
    from peft import LoraConfig, get_peft_model

    from persona_lib.models import load_model

    model, _ = load_model("tiny")
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_path):
    root = tmp_path_factory.mktemp("adapters")
    return {slug: make_adapter(root / slug, seed) for seed, slug in enumerate(multi.PERSONAS, start=1)}


@pytest.fixture(scope="module")
def classifier():
    return train_persona_classifier()


def logits(model, tokenizer, text="Plan my week, please."):
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def delta(model, adapter: str):
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    return layer.get_delta_weight(adapter).detach().clone()


# --------------------------------------------------------------------------- switching


def test_switching_never_reloads_the_base(adapters, monkeypatch, tiny):
    import peft.peft_model
    from transformers import PreTrainedModel

    model, tokenizer = multi.load_personas("tiny", adapters)
    assert set(model.peft_config) == set(multi.PERSONAS)
    base = {n: (id(p), p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters() if "lora_" not in n}

    loads = {"model": 0, "adapter": 0}
    real_model_load, real_adapter_load = PreTrainedModel.from_pretrained.__func__, peft.peft_model.load_peft_weights

    def count_model(cls, *args, **kwargs):
        loads["model"] += 1
        return real_model_load(cls, *args, **kwargs)

    def count_adapter(*args, **kwargs):
        loads["adapter"] += 1
        return real_adapter_load(*args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(count_model))
    monkeypatch.setattr(peft.peft_model, "load_peft_weights", count_adapter)

    outputs = {}
    for name in [*multi.PERSONAS, *reversed(multi.PERSONAS)]:
        multi.use_persona(model, name)
        assert model.active_adapter == name
        outputs[name] = logits(model, tokenizer)
    with model.disable_adapter():
        outputs[multi.BASE] = logits(model, tokenizer)
    assert loads == {"model": 0, "adapter": 0}

    after = dict(model.named_parameters())
    for n, (ident, ptr, value) in base.items():
        assert id(after[n]) == ident and after[n].data_ptr() == ptr and torch.equal(after[n], value), n
    # every voice is its own, and disabling the adapters gives exactly the plain base model
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.allclose(outputs[a], outputs[b]), (a, b)
    assert torch.allclose(outputs[multi.BASE], logits(*tiny), atol=1e-6)

    # the counters do see a load: adding a persona reads its adapter file, the base stays put
    model.load_adapter(str(adapters["taskmaster"]), adapter_name="taskmaster_again")
    assert loads == {"model": 0, "adapter": 1}


def test_parameter_counts_split_lora_and_count_a_packed_4bit_weight_at_its_real_size():
    from types import SimpleNamespace

    model = torch.nn.Module()
    model.q_proj = torch.nn.Linear(8, 6, bias=False)
    model.lora_A = torch.nn.Linear(8, 2, bias=False)
    model.packed = torch.nn.Parameter(torch.zeros(24, 1, dtype=torch.uint8), requires_grad=False)
    model.packed.quant_state = SimpleNamespace(shape=torch.Size([6, 8]))  # bitsandbytes: 48 values in 24 bytes
    assert multi.parameter_counts(model) == {"base": 48 + 48, "lora": 16}


def test_persona_replies_switch_and_reach_the_base(adapters):
    model, tokenizer = multi.load_personas("tiny", adapters)
    conversation = [[{"role": "user", "content": "What should I do first today?"}]]
    kw = dict(max_new_tokens=6, progress=False)
    a = multi.persona_replies(model, tokenizer, conversation, "taskmaster", **kw)
    b = multi.persona_replies(model, tokenizer, conversation, "zen_coder", **kw)
    base = multi.persona_replies(model, tokenizer, conversation, multi.BASE, **kw)
    assert model.active_adapter == "zen_coder"  # the base reply left the active adapter alone
    assert multi.persona_replies(model, tokenizer, conversation, "taskmaster", **kw) == a
    assert len({a[0], b[0], base[0]}) == 3


def test_unknown_adapter_and_missing_folder_errors_say_what_to_do(adapters, tmp_path):
    model, _ = multi.load_personas("tiny", {"taskmaster": adapters["taskmaster"]})
    with pytest.raises(KeyError, match="load_adapter"):
        multi.use_persona(model, "zen_coder")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        multi.load_personas("tiny", {"zen_coder": tmp_path / "nothing_here"})
    with pytest.raises(ValueError, match="without dots"):
        multi.load_personas("tiny", {"zen.coder": adapters["zen_coder"]})


def test_usable_adapter_checks_the_base_model(adapters, tmp_path):
    assert trained_on(adapters["taskmaster"], "tiny")
    assert not trained_on(adapters["taskmaster"], "some-org/other-model")
    assert not trained_on(tmp_path / "missing", "tiny")


# --------------------------------------------------------------------------- blending


def test_cat_blend_is_exactly_the_weighted_sum_of_updates(adapters):
    model, tokenizer = multi.load_personas("tiny", adapters)
    da, db = delta(model, "taskmaster"), delta(model, "zen_coder")
    for w in multi.BLEND_WEIGHTS:
        name = multi.blend(model, "taskmaster", "zen_coder", w)
        assert model.active_adapter == name
        assert torch.allclose(delta(model, name), (1 - w) * da + w * db, atol=1e-6), w
    # the ends of the curve are the two personas themselves
    multi.blend(model, "taskmaster", "zen_coder", 0.0, name="end0")
    at0 = logits(model, tokenizer)
    multi.use_persona(model, "taskmaster")
    assert torch.allclose(at0, logits(model, tokenizer), atol=1e-5)


def test_blend_replaces_a_stale_adapter_of_the_same_name(adapters):
    model, _ = multi.load_personas("tiny", adapters)
    db = delta(model, "zen_coder")
    multi.blend(model, "taskmaster", "zen_coder", 0.3, name="mix")
    multi.blend(model, "taskmaster", "zen_coder", 1.0, name="mix")
    assert torch.allclose(delta(model, "mix"), db, atol=1e-6)


def test_linear_blend_needs_one_rank_and_cat_does_not(adapters, tmp_path):
    wide = make_adapter(tmp_path / "wide", seed=9, r=8)
    model, _ = multi.load_personas("tiny", {"taskmaster": adapters["taskmaster"], "wide": wide})
    with pytest.raises(ValueError, match="use 'cat' or 'svd'"):
        multi.blend(model, "taskmaster", "wide", 0.5, combination="linear")
    name = multi.blend(model, "taskmaster", "wide", 0.5, combination="cat")
    assert model.peft_config[name].r == 12
    with pytest.raises(ValueError, match="combination must be one of"):
        multi.blend(model, "taskmaster", "wide", 0.5, combination="average")


def test_blend_curve_measures_every_weight_and_cleans_up(adapters, classifier):
    model, tokenizer = multi.load_personas("tiny", adapters)
    conversations = [p["messages"] for p in multi.bleed_prompts(per_persona=1)]
    curve = multi.blend_curve(model, tokenizer, "taskmaster", "zen_coder", conversations, classifier,
                              max_new_tokens=4, progress=False)
    assert [r["weight"] for r in curve["rows"]] == list(multi.BLEND_WEIGHTS)
    for row in curve["rows"]:
        assert len(row["replies"]) == len(conversations)
        assert 0 <= row["p_a"] <= 1 and 0 <= row["p_b"] <= 1 and 0 <= row["share_b"] <= 1
    p_b = [r["p_b"] for r in curve["rows"]]
    assert curve["monotonic"] == all(y >= x for x, y in zip(p_b, p_b[1:]))
    assert curve["rise"] == pytest.approx(p_b[-1] - p_b[0])
    assert set(model.peft_config) == set(multi.PERSONAS) and model.active_adapter == "taskmaster"


def test_blend_curve_reuses_its_replies_until_an_adapter_changes(adapters, classifier, tmp_path, monkeypatch):
    import torch

    model, tokenizer = multi.load_personas("tiny", adapters)
    conversations = [p["messages"] for p in multi.bleed_prompts(per_persona=1)]
    calls = []
    real = multi.persona_replies
    monkeypatch.setattr(multi, "persona_replies", lambda *a, **k: calls.append(a[3]) or real(*a, **k))

    def curve():
        return multi.blend_curve(model, tokenizer, "taskmaster", "zen_coder", conversations, classifier,
                                 weights=(0.0, 1.0), cache=tmp_path, max_new_tokens=4, progress=False)

    first = curve()
    assert len(calls) == 2 and len(list(tmp_path.glob("blend__*.jsonl"))) == 2
    model.set_adapter("zen_coder")  # left active by other work
    assert curve() == first and len(calls) == 2  # a rerun generates nothing
    assert model.active_adapter == "taskmaster"
    with torch.no_grad():  # zen_coder retrained: both weights that use it are asked again
        next(p for n, p in model.named_parameters() if "lora_B.zen_coder" in n).add_(0.5)
    curve()
    assert len(calls) == 4 and model.active_adapter == "taskmaster"


def test_figures_draw_the_matrices_and_the_curve(classifier, tmp_path):
    from persona_lib import plots

    ceiling = multi.ceiling_matrix(classifier)
    fig = plots.persona_bleed_matrices({"ceiling": ceiling, "again": ceiling}, path=tmp_path / "bleed.png")
    assert len(fig.axes) == 2 and (tmp_path / "bleed.png").stat().st_size > 0
    assert f"mean diagonal {ceiling['mean_diagonal']:.2f}" in fig.axes[0].get_title()
    rows = [{"weight": w, "p_a": 1 - w, "p_b": w, "share_b": float(w > 0.5)} for w in multi.BLEND_WEIGHTS]
    curve = {"a": "taskmaster", "b": "zen_coder", "combination": "cat", "rows": rows, "trend": "rises monotonically"}
    fig = plots.blend_curve_plot(curve, path=tmp_path / "blend.png")
    assert "rises monotonically" in fig.axes[0].get_title()
    assert [list(line.get_ydata()) for line in fig.axes[0].lines][1] == list(multi.BLEND_WEIGHTS)


# --------------------------------------------------------------------------- bleed


def test_confusion_counts_rates_and_diagonal():
    m = multi.confusion({"a": ["a", "a", "b", "c"], "b": ["b"], "c": []}, ["a", "b", "c"])
    assert m["counts"] == [[2, 1, 1], [0, 1, 0], [0, 0, 0]]
    assert m["rates"][0] == [0.5, 0.25, 0.25] and m["rates"][2] == [0.0, 0.0, 0.0]
    assert m["diagonal"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert m["mean_diagonal"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="not among the columns"):
        multi.confusion({"a": ["z"]}, ["a", "b"])


def test_every_bleed_cell_carries_an_interval_around_its_rate():
    m = multi.confusion({"a": ["a"] * 24 + ["b"] * 6, "b": ["b"] * 30}, ["a", "b"])
    (a_low, a_high), (b_low, b_high) = m["intervals"][0]
    assert a_low < 0.8 < a_high and b_low < 0.2 < b_high and a_high - a_low > 0.15  # 30 items: wide
    assert m["intervals"][1] == [[0.0, 0.0], [1.0, 1.0]]  # all alike: no spread to resample


def reference_replies(slug, n=6):
    return [m["content"] for r in split_reserved(load_shipped(slug))[1][:n] for m in r["messages"]
            if m["role"] == "assistant"][:n]


def test_bleed_matrix_sees_voices_and_their_swaps(classifier):
    replies = {slug: reference_replies(slug) for slug in ("taskmaster", "captain_codebeard")}
    clean = multi.bleed_matrix(replies, classifier)
    assert clean["rows"] == ["taskmaster", "captain_codebeard"]
    assert clean["labels"] == ["taskmaster", "captain_codebeard", "zen_coder"]  # rows first: a true diagonal
    assert clean["diagonal"]["taskmaster"] >= 0.8 and clean["diagonal"]["captain_codebeard"] >= 0.8
    # TaskMaster's adapter answering in the Captain's voice is bleed: off the diagonal
    swapped = multi.bleed_matrix({"taskmaster": replies["captain_codebeard"]}, classifier)
    assert swapped["diagonal"]["taskmaster"] <= 0.2
    assert swapped["counts"][0][swapped["labels"].index("captain_codebeard")] >= 5
    for row in clean["mean_probability"]:
        assert sum(row) == pytest.approx(1.0)


def test_ceiling_is_the_classifiers_own_heldout_matrix(classifier):
    ceiling = multi.ceiling_matrix(classifier)
    assert ceiling["rows"] == ceiling["labels"] == list(multi.PERSONAS)
    table = classifier.heldout["confusion"]
    for i, row in enumerate(ceiling["rows"]):
        assert ceiling["counts"][i] == [table[row][col] for col in ceiling["labels"]]
    assert sum(ceiling["n"].values()) == classifier.heldout["accuracy"]["n"]


def test_bleed_prompts_pool_every_persona_over_its_topics():
    pool = multi.bleed_prompts(("taskmaster", "captain_codebeard"), per_persona=5)
    assert [p["persona"] for p in pool] == ["taskmaster"] * 5 + ["captain_codebeard"] * 5
    assert len({p["id"] for p in pool}) == 10
    assert all(p["messages"][-1]["role"] == "user" for p in pool)
    with pytest.raises(ValueError):
        multi.bleed_prompts(per_persona=0)


# --------------------------------------------------------------------------- conditioned design


def test_conditioned_records_name_the_persona_and_skip_the_reserved_slice():
    records = {slug: multi.training_records(slug) for slug in multi.PERSONAS}
    mixed = multi.conditioned_records(records)
    assert len(mixed) == sum(map(len, records.values()))
    reserved = {r["id"] for slug in multi.PERSONAS for r in split_reserved(load_shipped(slug))[1]}
    assert reserved and not reserved & {r["id"] for r in mixed}
    prompts = {slug: multi.conditioning_prompt(slug) for slug in multi.PERSONAS}
    for r in mixed:
        assert r["messages"][0] == {"role": "system", "content": prompts[r["persona"]]}
        assert [m["role"] for m in r["messages"][1:]].count("system") == 0
    assert multi.conditioning_prompt("captain_codebeard") == "You are Captain Codebeard."
    assert [r["persona"] for r in mixed[:3]] == list(multi.PERSONAS)  # interleaved


def test_design_replies_rejects_an_unknown_design(adapters):
    with pytest.raises(ValueError, match="separate' or 'conditioned"):
        multi.design_replies(None, None, [], multi.PERSONAS, "merged")


# --------------------------------------------------------------------------- router


def test_router_explicit_then_first_keyword_then_default():
    router = multi.Router()
    assert router.route("Captain, is this commit message fine?") == "captain_codebeard"
    assert router.route("I feel stuck and frustrated with recursion") == "zen_coder"
    assert router.route("Move my deadline to Friday") == "taskmaster"
    assert router.explain("Hello there") == ("taskmaster", "default")
    assert router.route("review my PR", persona="zen_coder") == "zen_coder"
    assert router.route("my taskbar froze") == "taskmaster"  # default, not the keyword "task"
    assert router.explain("my taskbar froze")[1] == "default"


def test_router_rules_are_editable_and_checked():
    router = multi.Router(rules={"zen_coder": ("breathe",)}, default="captain_codebeard")
    assert router.route("I need to breathe") == "zen_coder"
    assert router.route("Move my deadline") == "captain_codebeard"
    router.rules["zen_coder"] += ("deadline",)  # an edit takes effect at once
    assert router.explain("Move my deadline") == ("zen_coder", "keyword 'deadline'")
    with pytest.raises(ValueError, match="non-empty list of keywords"):
        multi.Router(rules={"zen_coder": "breathe"})


def test_default_rules_route_most_held_out_prompts_home():
    prompts = multi.bleed_prompts(("taskmaster", "captain_codebeard"), per_persona=20)
    matrix = multi.routing_matrix(multi.Router(), prompts)
    assert matrix["diagonal"]["taskmaster"] >= 0.6
    assert matrix["diagonal"]["captain_codebeard"] >= 0.5


# --------------------------------------------------------------------------- training and the stage


def test_ensure_adapter_trains_once_then_reuses(tmp_path, adapters):
    from persona_lib.train import TrainConfig

    config = TrainConfig.smoke(max_steps=1, eval_steps=0)
    records = multi.training_records("zen_coder")[:2]
    first = multi.ensure_adapter(tmp_path / "zen", config, records, progress=False)
    assert first["trained"] and first["train_s"] > 0 and first["steps"] == 1
    assert trained_on(tmp_path / "zen", "tiny")
    again = multi.ensure_adapter(tmp_path / "zen", config, records, progress=False)
    assert not again["trained"] and again["train_s"] == first["train_s"]
    assert first["matches"] and again["matches"] and again["folder"] == str(tmp_path / "zen")
    assert not trained_on(tmp_path / "zen", "embedded")  # trained on tiny: not for SmolLM2


def test_ensure_adapter_reuses_an_adapter_whose_length_min_steps_set(tmp_path, adapters):
    """Two conversations make one update an epoch; min_steps=2 trains two. A rerun of the same
    config must find that adapter finished, not train it again (lesson 6's Run all, second time)."""
    from persona_lib.io import read_json
    from persona_lib.train import TrainConfig

    config = TrainConfig.smoke(max_steps=-1, num_epochs=1, min_steps=2, eval_steps=0, validation_fraction=0.0)
    records = multi.training_records("zen_coder")[:2]
    first = multi.ensure_adapter(tmp_path / "zen", config, records, progress=False)
    assert first["trained"] and first["steps"] == 2
    assert read_json(tmp_path / "zen" / "manifest.json")["config"]["max_steps"] == -1
    again = multi.ensure_adapter(tmp_path / "zen", config, records, progress=False)
    assert not again["trained"] and again["matches"] and again["folder"] == first["folder"]


def test_ensure_adapter_never_passes_off_an_adapter_trained_another_way(tmp_path, adapters, capsys):
    """Lesson 4's adapter had fewer updates than lesson 6 asks (or other data): lesson 6 trains its
    own beside it, leaves lesson 4's untouched, and reuses its own next time; keep=True uses the
    old one and says what differs."""
    from persona_lib.train import TrainConfig

    records = multi.training_records("zen_coder")[:2]
    lesson4 = multi.ensure_adapter(tmp_path / "zen", TrainConfig.smoke(max_steps=1, eval_steps=0), records,
                                   progress=False)
    before = (tmp_path / "zen" / "adapter_model.safetensors").read_bytes()
    capsys.readouterr()
    config = TrainConfig.smoke(max_steps=2, eval_steps=0)
    lesson6 = multi.ensure_adapter(tmp_path / "zen", config, records, progress=False)
    assert lesson6["trained"] and lesson6["steps"] == 2 and lesson6["folder"] != lesson4["folder"]
    assert "max_steps differ" in capsys.readouterr().out
    assert (tmp_path / "zen" / "adapter_model.safetensors").read_bytes() == before
    again = multi.ensure_adapter(tmp_path / "zen", config, records, progress=False)
    assert not again["trained"] and again["folder"] == lesson6["folder"] and again["matches"]
    edited = multi.training_records("zen_coder")[2:4]
    kept = multi.ensure_adapter(tmp_path / "zen", TrainConfig.smoke(max_steps=1, eval_steps=0), edited, keep=True,
                                progress=False)
    assert not kept["trained"] and kept["differs"] == ["data"] and not kept["matches"]
    assert "trained with other data" in capsys.readouterr().out


def test_ensure_adapter_never_trains_over_an_adapter_it_cannot_use(tmp_path, adapters, capsys):
    """Lesson 4's adapter on another base model (a T4 run, then lesson 6 on a CPU runtime), or
    without its manifest (lesson 4 stopped mid-retrain deletes it first): lesson 6 trains beside
    it and leaves its files as they are, even with keep=True."""
    from persona_lib.io import read_json, write_json
    from persona_lib.train import TrainConfig

    config = TrainConfig.smoke(max_steps=1, eval_steps=0)
    records = multi.training_records("zen_coder")[:2]
    multi.ensure_adapter(tmp_path / "zen", config, records, progress=False)
    manifest = tmp_path / "zen" / "manifest.json"
    write_json(manifest, {**read_json(manifest), "base_model": "unsloth/Llama-3.2-3B-Instruct",
                          "model_path": "/content/models/llama"})
    before = (tmp_path / "zen" / "adapter_model.safetensors").read_bytes()
    capsys.readouterr()
    other_base = multi.ensure_adapter(tmp_path / "zen", config, records, keep=True, progress=False)
    assert other_base["trained"] and other_base["folder"] != str(tmp_path / "zen")
    assert "another base model" in capsys.readouterr().out
    manifest.unlink()
    unfinished = multi.ensure_adapter(tmp_path / "zen", config, records, keep=True, progress=False)
    assert not unfinished["trained"] and unfinished["folder"] == other_base["folder"]
    assert "no manifest.json" in capsys.readouterr().out
    assert (tmp_path / "zen" / "adapter_model.safetensors").read_bytes() == before
    # Lesson 4 stopped before its first run finished: only its checkpoints, of another config.
    stopped = tmp_path / "stopped"
    write_json(stopped / "checkpoints" / "run_key.json", {"config": {"lora_r": 4}, "train_data": "x"})
    beside = multi.ensure_adapter(stopped, config, records, progress=False)
    assert beside["trained"] and beside["folder"] != str(stopped)
    assert (stopped / "checkpoints" / "run_key.json").is_file() and "another, unfinished run" in capsys.readouterr().out


def test_multi_config_checks_its_fields():
    with pytest.raises(ValueError) as err:
        multi.MultiConfig(personas=("taskmaster",), blend_pair=("taskmaster", "nobody"), prompts_per_persona=0,
                          max_steps=0, combination="mean")
    for field in ("personas", "blend_pair", "prompts_per_persona", "max_steps", "combination"):
        assert field in str(err.value)
    with pytest.raises(ValueError, match="min_steps"):
        multi.MultiConfig(min_steps=-1)
    with pytest.raises(ValueError, match="min_steps_by_persona"):
        multi.MultiConfig(min_steps_by_persona={"zen_coder": -5})
    pair = multi.MultiConfig(personas=("taskmaster", "zen_coder"), blend_pair=("taskmaster", "zen_coder"))
    assert (pair.train_config("taskmaster").min_steps, pair.train_config("taskmaster").max_steps) == (60, -1)
    assert pair.train_config(conditioned=True).min_steps == 120  # the separate runs' minimums together
    three = multi.MultiConfig()  # Codebeard's voice needs more updates than the others
    assert [three.train_config(slug).min_steps for slug in three.personas] == [60, 120, 60]
    assert three.train_config(conditioned=True).min_steps == 240
    assert multi.MultiConfig(min_steps=30, min_steps_by_persona={}).train_config("captain_codebeard").min_steps == 30
    smoke = multi.MultiConfig.smoke()
    assert smoke.model == "tiny" and smoke.train_config().max_steps == 1
    assert len(smoke.records("taskmaster")) == 4


def test_bleed_replies_are_reused_until_the_adapter_changes(adapters, tmp_path, monkeypatch):
    model, tokenizer = multi.load_personas("tiny", {**adapters, multi.CONDITIONED: adapters["zen_coder"]})
    prompts = multi.bleed_prompts(("taskmaster", "zen_coder"), per_persona=1)
    kw = dict(max_new_tokens=4, progress=False)
    first = multi.bleed_replies(model, tokenizer, prompts, ["taskmaster", "zen_coder"], "conditioned", tmp_path, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conditioned__taskmaster.jsonl",
                                                          "conditioned__zen_coder.jsonl"]
    asked = []
    real = multi.design_replies
    monkeypatch.setattr(multi, "design_replies", lambda *a, **k: asked.append(a[3]) or real(*a, **k))
    assert multi.bleed_replies(model, tokenizer, prompts, ["taskmaster", "zen_coder"], "conditioned", tmp_path,
                               **kw) == first
    assert asked == []
    with torch.no_grad():  # "retrain" the conditioned adapter: its cached replies no longer count
        next(p for n, p in model.named_parameters() if f"lora_B.{multi.CONDITIONED}" in n).mul_(2)
    multi.bleed_replies(model, tokenizer, prompts, ["taskmaster", "zen_coder"], "conditioned", tmp_path, **kw)
    assert asked == [["taskmaster"], ["zen_coder"]]
    multi.bleed_replies(model, tokenizer, prompts, ["taskmaster"], "conditioned", tmp_path, max_new_tokens=5,
                        progress=False)
    assert asked[-1] == ["taskmaster"]  # other generation settings: asked again


@pytest.mark.slow  # four smoke trainings and every measurement on the tiny model: ~30 s on a busy 2-core box
def test_run_multi_is_the_whole_lesson_and_resumes(tmp_path):
    import json

    config = multi.MultiConfig.smoke()
    summary = multi.run_multi(config, tmp_path, progress=False)
    out = multi.multi_dir(tmp_path)
    for name in ("bleed.json", "bleed.png", "blend.json", "blend.png", "routing.json", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert summary["reused"] == [] and set(summary["train_s"]) == {*multi.PERSONAS, multi.CONDITIONED}
    bleed = json.loads((out / "bleed.json").read_text())
    assert all(sum(map(sum, bleed[d]["counts"])) == 3 * 3 for d in ("separate", "conditioned"))
    again = multi.run_multi(config, tmp_path, progress=False)  # everything reused, nothing retrained
    assert set(again["reused"]) == {*multi.PERSONAS, multi.CONDITIONED}
    assert again["diagonal"] == summary["diagonal"]
