"""Export: merge, llama.cpp's converter and quantizer, what the GGUF really holds, the chat
template three ways (tokenizer, GGUF as llama.cpp applies it, Go's text/template over the
Modelfile), end of turn, persona adapters over one base, parity, resume and interruption.

Everything runs on the tiny random-init model with adapters made here (random LoRA weights,
so that merging changes the model and two adapters are two different "personas").
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from persona_lib import export as ex
from persona_lib import io, llama_runtime, ollama, parity
from persona_lib.adapters import placeholder

ROOT = Path(__file__).resolve().parent.parent
QUESTION = [{"role": "user", "content": "I have three deadlines this week. Where do I start?"}]

# Conversations as training and evaluation write them: alternating turns, with and without a
# system message. (Ollama joins two consecutive messages of one role into one; the tokenizer
# keeps them apart. Training data always alternates, so that case is left out.)
CONVERSATIONS = {
    "no_system": QUESTION,
    "system": [{"role": "system", "content": "You are TaskMaster."}, *QUESTION],
    "multi_turn": [
        {"role": "user", "content": "Add 'file taxes' for Friday."},
        {"role": "assistant", "content": "Done: 'file taxes' is due Friday. Small win!"},
        {"role": "user", "content": "And remind me Thursday?"},
    ],
    "template_lookalikes": [
        {"role": "user", "content": "Literal {{ .System }} and {% if x %}, café ü 🎯\n\n  spaced  "},
    ],
    "late_system": [*QUESTION, {"role": "assistant", "content": "Start with the nearest one."},
                    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "OK, and then?"}],
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_path):
    """Two random adapters on the tiny model; the full export of the first (merged folder,
    f16 and Q4_K_M GGUFs, base GGUF, GGUF LoRA, Modelfiles) and the second as a GGUF LoRA."""
    root = tmp_path_factory.mktemp("export")
    tiny_tokenizer = (Path(tiny_path) / "tokenizer.json").read_bytes()
    a = placeholder(root / "taskmaster" / "adapter", "tiny", seed=1, std=0.3)
    b = placeholder(root / "other" / "adapter", "tiny", seed=2, std=0.3)
    out = root / "taskmaster" / "export"
    record = ex.export(a, out, ex.ExportConfig.smoke(), progress=False)
    lora_b = ex.convert_lora(b, out / "other.lora.gguf", base_dir=tiny_path)
    return {"root": root, "adapter": a, "adapter_b": b, "out": out, "record": record, "lora_b": lora_b,
            "tiny_tokenizer": tiny_tokenizer}


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    """tests/go built into a binary that renders a TEMPLATE with Go's text/template as Ollama does."""
    if shutil.which("go") is None:
        pytest.skip("Go is not installed (Debian: apt-get install golang-go); the Modelfile TEMPLATE check needs "
                    "Go's real text/template, which a Python imitation cannot stand in for")
    binary = tmp_path_factory.mktemp("go") / "render"
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=ROOT / "tests" / "go", check=True)

    def render(template: str, system: str, messages: list[dict]) -> str:
        data = json.dumps({"template": template, "system": system, "messages": messages})
        done = subprocess.run([str(binary)], input=data, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return render


def logits(model, tokenizer, text="Plan my week, please."):
    import torch

    with torch.inference_mode():
        return model(**tokenizer(text, return_tensors="pt")).logits


# ----------------------------------------------------------------------------- fast units


def test_converter_runs_with_its_own_gguf_py():
    code = "import gguf, conversion; print(gguf.__file__)"
    done = subprocess.run([sys.executable, "-c", code], env=ex.converter_env(), capture_output=True, text=True,
                          cwd=ex.converter_dir())
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(ex.converter_dir() / "gguf-py")


def test_merge_folds_the_adapter_into_the_weights(tmp_path, tiny_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = placeholder(tmp_path / "adapter", "tiny", seed=3, std=0.3)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_path
    merged = ex.merge_adapter(adapter, tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(merged)
    base = AutoModelForCausalLM.from_pretrained(tiny_path)
    base_logits = logits(base, tokenizer)
    peft_logits = logits(PeftModel.from_pretrained(base, adapter), tokenizer)
    merged_logits = logits(AutoModelForCausalLM.from_pretrained(merged), tokenizer)
    assert (merged_logits - peft_logits).abs().max() < 1e-4
    assert (merged_logits - base_logits).abs().max() > 1e-2
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(adapter).chat_template
    assert not json.loads((merged / "tokenizer.json").read_text())["model"]["byte_fallback"]
    assert not list(tmp_path.glob(".*partial"))


def test_byte_level_tokenizer_fix_changes_no_token(tmp_path, tiny_path):
    from transformers import AutoTokenizer

    shutil.copytree(tiny_path, tmp_path / "tok", ignore=shutil.ignore_patterns("*.safetensors"))
    text = "Plan 2024-05-01: café, déjà vu!  <|im_end|>\n\ttabs 🎯"
    before = AutoTokenizer.from_pretrained(tmp_path / "tok")
    repaired = ex._byte_level_tokenizer_json(tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(repaired))
    assert ex._byte_level_tokenizer_json(tmp_path / "tok") is None
    after = AutoTokenizer.from_pretrained(tmp_path / "tok")
    ids = before(text, add_special_tokens=False).input_ids
    assert after(text, add_special_tokens=False).input_ids == ids
    assert after.decode(ids) == before.decode(ids) == text


def test_check_resources_says_what_a_step_needs(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(ex.ExportError, match=r"needs about .* of disk .* free.*not enough disk"):
        ex.check_resources("convert", tmp_path / "not" / "yet", disk=free * 10)
    with pytest.raises(ex.ExportError, match="not enough memory"):
        ex.check_resources("merge", tmp_path, disk=1, memory=1e15)
    assert ex.check_resources("merge", tmp_path, disk=1, memory=1)["disk_free"] > 0


def test_atomic_output_leaves_nothing_when_interrupted(tmp_path):
    final = tmp_path / "model.gguf"
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_output(final) as tmp:
            tmp.write_bytes(b"half a file")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with io.atomic_output(final) as tmp:
        tmp.write_bytes(b"whole")
    assert final.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [final]


def test_token_agreement_counts_the_common_start():
    assert parity.token_agreement([1, 2, 3, 4], [1, 2, 9, 4]) == 0.5
    assert parity.token_agreement([1, 2], [1, 2, 3, 4]) == 0.5
    assert parity.token_agreement([], []) == 1.0
    assert parity.token_agreement([5], []) == 0.0


def test_parity_agreements_carry_intervals_over_the_prompts():
    ci = parity.agreement_intervals([1.0, 1.0, 0.5, 0.0])
    assert ci["token_agreement_interval"]["mean"] == 0.625 and ci["identical_replies_interval"]["mean"] == 0.5
    assert ci["identical_replies_interval"]["low"] < 0.5 < ci["identical_replies_interval"]["high"]


def test_modelfile_parses_back_and_leaves_out_a_template_it_cannot_write(tiny):
    _, tokenizer = tiny
    text = ollama.modelfile("tm.Q4_K_M.gguf", tokenizer, temperature=0.2, num_ctx=4096, title="TaskMaster")
    parsed = ollama.parse_modelfile(text)
    template, default = ollama.ollama_template(tokenizer)
    assert parsed["from"] == "./tm.Q4_K_M.gguf"
    assert parsed["template"] == template and template.endswith("<|im_start|>assistant\n")
    assert parsed["system"] == default == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert parsed["parameters"] == {"stop": ["<|im_end|>", "<|im_start|>"], "temperature": ["0.2"], "num_ctx": ["4096"]}
    assert ollama.parse_modelfile(ollama.modelfile("b.gguf", tokenizer, adapter="tm.lora.gguf",
                                                   system="Be TaskMaster."))["adapter"] == "./tm.lora.gguf"

    llama3 = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
              "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
              "{% endif %}")
    saved = tokenizer.chat_template
    tokenizer.chat_template = llama3
    try:
        assert ollama.ollama_template(tokenizer) is None
        other = ollama.parse_modelfile(ollama.modelfile("x.gguf", tokenizer))
    finally:
        tokenizer.chat_template = saved
    assert "template" not in other and other["parameters"]["stop"] == [tokenizer.eos_token]


# ----------------------------------------------------------------------------- converter and quantizer


@pytest.mark.slow
def test_tensor_types_show_what_the_quantizer_really_wrote(exported):
    out = exported["out"]
    f16 = ex.tensor_types(out / "taskmaster.f16.gguf")
    assert f16["file_type"] == "F16" and f16["tensors"] == {"F16": 15, "F32": 5}
    q4 = ex.tensor_types(out / "taskmaster.Q4_K_M.gguf")
    assert q4 == exported["record"]["steps"]["Q4_K_M"]["tensor_types"]
    # The tiny model's rows are 64 or 128 wide, k-quants need 256: no Q4_K or Q6_K at all;
    # llama.cpp falls back to Q5_0 and Q8_0, and keeps the norms in F32.
    assert q4["file_type"] == "Q4_K_M"
    assert set(q4["tensors"]) == {"Q5_0", "Q8_0", "F32"} and sum(q4["tensors"].values()) == 20
    q8 = ex.tensor_types(ex.quantize_gguf(out / "taskmaster.f16.gguf", out / "taskmaster.Q8_0.gguf", "Q8_0"))
    assert q8["file_type"] == "Q8_0" and q8["tensors"] == {"Q8_0": 15, "F32": 5}


@pytest.mark.slow
def test_interrupted_conversion_leaves_no_file_under_the_final_name(exported, monkeypatch, tmp_path):
    merged = exported["out"] / "merged"
    final = tmp_path / "model.f16.gguf"
    seen = []

    def interrupted(path):  # the converter has written its file; stop before the rename
        seen.append(path.stat().st_size)
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "_check_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ex.convert_to_gguf(merged, final)
    assert seen and seen[0] > 1_000_000
    assert not final.exists() and not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.partial"))
    monkeypatch.undo()

    broken = tmp_path / "broken"
    shutil.copytree(merged, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchModelForCausalLM"]}))
    with pytest.raises(ex.ExportError, match=r"convert_hf_to_gguf.py failed .*full log"):
        ex.convert_to_gguf(broken, final)
    assert not final.exists() and not list(tmp_path.glob(".*.partial"))


# ----------------------------------------------------------------------------- one template, three renderings


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_chat_template_is_the_same_in_tokenizer_gguf_and_modelfile(exported, go_render, name):
    from transformers import AutoTokenizer

    messages = CONVERSATIONS[name]
    tokenizer = AutoTokenizer.from_pretrained(exported["adapter"])  # the tokenizer training used
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    llm = llama_runtime.load_gguf(exported["out"] / "taskmaster.Q4_K_M.gguf", n_ctx=512)
    assert llama_runtime.gguf_prompt(llm, messages) == expected
    llm.close()

    parsed = ollama.parse_modelfile((exported["out"] / "Modelfile").read_text())
    assert go_render(parsed["template"], parsed["system"], messages) == expected  # Ollama adds SYSTEM
    assert go_render(parsed["template"], "", messages) == expected  # no SYSTEM: the template adds it


@pytest.mark.slow
def test_the_comparison_catches_a_wrong_template(exported, go_render):
    """Without its default-system block, the Go template differs from training: the check can fail."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exported["adapter"])
    template = ollama.parse_modelfile((exported["out"] / "Modelfile").read_text())["template"]
    without_default = template[template.index("{{- range"):]
    expected = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert go_render(without_default, "", QUESTION) != expected


@pytest.mark.slow
def test_llama_cpp_builtin_chatml_leaves_out_the_default_system_prompt(exported):
    """Why the GGUF side goes through the file's Jinja template (as llama-cpp-python does) and
    not llama.cpp's C `llama_chat_apply_template`: the C function recognises ChatML and uses
    a built-in one, which agrees when the chat has a system message and drops SmolLM2's
    default system prompt when it has none."""
    import ctypes

    import llama_cpp

    llm = llama_runtime.load_gguf(exported["out"] / "taskmaster.f16.gguf", n_ctx=512)
    template = llm.metadata["tokenizer.chat_template"].encode()

    def builtin(messages):
        chat = (llama_cpp.llama_chat_message * len(messages))(
            *[llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in messages])
        buf = ctypes.create_string_buffer(4096)
        n = llama_cpp.llama_chat_apply_template(template, chat, len(messages), True, buf, len(buf))
        return buf.raw[:n].decode()

    with_system = CONVERSATIONS["system"]
    assert builtin(with_system) == llama_runtime.gguf_prompt(llm, with_system)
    assert builtin(QUESTION) != llama_runtime.gguf_prompt(llm, QUESTION)
    assert "SmolLM" in llama_runtime.gguf_prompt(llm, QUESTION) and "SmolLM" not in builtin(QUESTION)
    llm.close()


# ----------------------------------------------------------------------------- llama.cpp at run time


@pytest.mark.slow
def test_gguf_ends_a_turn_at_the_end_of_turn_token(exported):
    check = exported["record"]["chat_check"]
    assert check["eos_token"] == "<|im_end|>" and check["eos_is_end_of_generation"]
    assert check["forced_end_of_turn_stops"] and check["ok"]
    assert "<|im_end|>" not in check["reply"]


@pytest.mark.slow
def test_persona_adapters_switch_over_one_base(exported, tiny_path):
    out = exported["out"]
    personas = llama_runtime.PersonaAdapters(out / "base.f16.gguf",
                                             {"a": out / "taskmaster.lora.gguf", "b": exported["lora_b"]},
                                             n_ctx=512)
    replies = {}
    for name in ["a", "b", None, "a"]:
        personas.use(name)
        replies.setdefault(name, []).append(personas.reply(QUESTION, max_tokens=12))
    personas.close()
    a, b, base = replies["a"][0], replies["b"][0], replies[None][0]
    assert len({a, b, base}) == 3, replies
    assert replies["a"][1] == a  # switching back gives the same persona (the cache was reset)

    # The base GGUF came from the shared tiny model folder, which the export left untouched.
    assert (Path(tiny_path) / "tokenizer.json").read_bytes() == exported["tiny_tokenizer"]
    plain = llama_runtime.load_gguf(out / "base.f16.gguf", n_ctx=512)
    alone = plain.create_chat_completion(QUESTION, temperature=0.0, max_tokens=12)["choices"][0]["message"]["content"]
    assert alone == base
    plain.close()


@pytest.mark.slow
def test_export_record_parity_and_resume(exported, capsys):
    record, out = exported["record"], exported["out"]
    assert {"merge", "f16", "Q4_K_M", "base_f16", "lora"} <= set(record["steps"])
    assert all(s["bytes"] > 0 and not s["skipped"] for s in record["steps"].values())
    assert json.loads((out / "export.json").read_text())["steps"]["f16"]["path"] == "taskmaster.f16.gguf"
    parity = record["parity"]["systems"]
    for name in ["f16", "Q4_K_M"]:
        assert parity[name]["prompt_tokens_equal"] == 1.0  # same template and tokenizer as HF
        diff = parity[name]["signature_diff_vs_hf"]
        assert diff["low"] <= diff["diff"] <= diff["high"]
        assert 0.0 <= parity[name]["token_agreement"] <= 1.0
    rows = [json.loads(line) for line in (out / "parity.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"hf_reply", "f16_reply", "Q4_K_M_reply", "Q4_K_M_agreement"} <= set(rows[0])
    assert record["ollama"] == ["ollama create taskmaster -f Modelfile", "ollama run taskmaster"]
    assert ollama.parse_modelfile((out / "Modelfile.adapter").read_text())["adapter"] == "./taskmaster.lora.gguf"

    again = ex.export(exported["adapter"], out, ex.ExportConfig.smoke(), progress=False)
    assert all(s["skipped"] for s in again["steps"].values())
    assert "parity.json: already there, skipping" in capsys.readouterr().out
    assert again["parity"] == record["parity"]


def test_parity_is_measured_again_only_when_a_model_file_or_setting_changed(tmp_path, monkeypatch):
    """Lesson 7's parity cell on a rerun: the report is read back, unless a GGUF was remade,
    the prompts changed, or its replies file is gone."""
    calls = []

    def fake_parity(hf_dir, ggufs, conversations, phrases, *, ids, **settings):
        calls.append(ids)
        return {"n": len(ids), "systems": {name: {"token_agreement": 1.0} for name in ggufs},
                "rows": [{"id": i} for i in ids]}

    monkeypatch.setattr(ex, "export_parity", fake_parity)
    merged, gguf = tmp_path / "merged", tmp_path / "m.Q4_K_M.gguf"
    merged.mkdir()
    (merged / "model.safetensors").write_bytes(b"w")
    gguf.write_bytes(b"q")
    prompts = [{"id": "p1", "messages": [{"role": "user", "content": "hi"}]}]
    config = ex.ExportConfig.smoke()

    def measure(prompts=prompts):
        return ex.parity_once(tmp_path, merged, {"Q4_K_M": gguf}, prompts, ["let's"], config, progress=False)

    first = measure()
    assert first == {"n": 1, "systems": {"Q4_K_M": {"token_agreement": 1.0}}} and len(calls) == 1
    assert measure() == first and len(calls) == 1
    assert [json.loads(line)["id"] for line in (tmp_path / "parity.jsonl").read_text().splitlines()] == ["p1"]
    os.utime(gguf, ns=(1, 1))  # remade
    measure()
    measure([*prompts, {"id": "p2", "messages": [{"role": "user", "content": "and?"}]}])
    (tmp_path / "parity.jsonl").unlink()
    measure([*prompts, {"id": "p2", "messages": [{"role": "user", "content": "and?"}]}])
    assert len(calls) == 4


class _TemplateOnly:
    """What chat_check reads from a GGUF to find the end of a turn: its chat template and its
    BOS/EOS texts. Stands in for a Llama 3.2 GGUF, which the tiny test model cannot become."""

    chat_format = "chat_template.default"

    def __init__(self, template: str, bos: str, eos: str):
        self.metadata = {"tokenizer.chat_template": template}
        self.texts = {0: bos, 1: eos}

    def token_bos(self):
        return 0

    def token_eos(self):
        return 1

    def detokenize(self, tokens, special=False):
        return "".join(self.texts[t] for t in tokens).encode()


def test_end_of_turn_is_read_from_the_templates_own_rendering():
    """Lesson 7 on Colab's default model (Llama 3.2): the end of a turn is <|eot_id|>, found
    the same way as SmolLM2's <|im_end|>, so the check does not assume ChatML."""
    from fixtures.chat_tokenizers import HERE

    llama3 = _TemplateOnly((HERE / "llama3_2_chat_template.jinja").read_text(), "<|begin_of_text|>", "<|eot_id|>")
    assert llama_runtime.end_of_turn_text(llama3) == "<|eot_id|>"
    from persona_lib.models import load_tokenizer

    tok = load_tokenizer("tiny")
    chatml = _TemplateOnly(tok.chat_template, tok.bos_token or "", "<|im_end|>")
    assert llama_runtime.end_of_turn_text(chatml) == "<|im_end|>"
    wrong = _TemplateOnly(tok.chat_template, tok.bos_token or "", "<|endoftext|>")  # an EOS that ends no turn
    assert llama_runtime.end_of_turn_text(wrong) != "<|endoftext|>"


def test_once_remakes_what_was_made_from_other_inputs_and_everything_after_it(tmp_path, capsys):
    """An export step is skipped only when its output is there and was made from the same
    inputs; a retrained adapter remakes the merge, and the merge's new identity the next step."""
    import os

    from persona_lib import adapters, io

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"first")
    made = []

    def make(text):
        def write(path):
            made.append(path.name)
            path.write_text(text)
        return write

    def chain(dtype="float16"):
        merged = ex.once(tmp_path / "merged.txt", make(f"merged {dtype}"),
                         inputs={"adapter": adapters.identity(adapter), "dtype": dtype})
        return ex.once(tmp_path / "model.gguf", make("gguf"), inputs={"merged": io.identity(merged)})

    chain()
    assert made == ["merged.txt", "model.gguf"]
    assert json.loads((tmp_path / "merged.txt.inputs.json").read_text())["dtype"] == "float16"
    chain()
    assert made == ["merged.txt", "model.gguf"] and "already there, skipping" in capsys.readouterr().out
    (adapter / "before_after.jsonl").write_text("{}")  # lesson 4's notes cell, run again: not the adapter
    chain()
    assert made == ["merged.txt", "model.gguf"]

    (adapter / "adapter_model.safetensors").write_bytes(b"retrained")  # another size and time
    os.utime(adapter / "adapter_model.safetensors", ns=(1, 1))
    chain()
    assert made[2:] == ["merged.txt", "model.gguf"]
    assert "merged.txt: made from other inputs (adapter changed): making it again" in capsys.readouterr().out
    chain(dtype="bfloat16")
    assert made[4:] == ["merged.txt", "model.gguf"]
    assert ex.stale(tmp_path / "merged.txt", {"adapter": adapters.identity(adapter), "dtype": "bfloat16"}) is None

    # Without recorded inputs (an output from before they were recorded) a step is remade once.
    (tmp_path / "model.gguf.inputs.json").unlink()
    chain(dtype="bfloat16")
    assert made[6:] == ["model.gguf"]
    ex.once(tmp_path / "model.gguf", make("gguf"))  # no inputs given: being there is enough
    assert made[7:] == []


def test_pick_adapter_finds_the_one_lesson_6_trained_beside(tmp_path, tiny_path, capsys):
    """Lesson 4 on a T4 (another base), lesson 6 on a CPU runtime: lesson 6 trained beside it, in
    adapter-<hash>, and lesson 7 on the CPU exports that one rather than leaving the persona out."""
    from persona_lib import io
    from persona_lib.llama_runtime import ExportError

    lesson4 = placeholder(tmp_path / "adapter", "tiny")
    io.write_json(lesson4 / "manifest.json", {"base_model": "unsloth/Llama-3.2-3B-Instruct",
                                              "model_path": "/content/models/llama"})
    with pytest.raises(ExportError, match="no adapter trained on tiny"):
        ex.pick_adapter(lesson4, "tiny")
    lesson6 = placeholder(tmp_path / "adapter-0123456789", "tiny")
    io.write_json(lesson6 / "manifest.json", {"base_model": "tiny", "model_path": tiny_path})
    assert ex.pick_adapter(lesson4, "tiny") == (lesson6, True)
    assert "trained beside it" in capsys.readouterr().out


def test_keep_copies_a_file_again_only_when_it_changed(tmp_path, capsys, monkeypatch):
    """Lesson 7 on Colab copies what the learner keeps to Drive at the end of every Run all: an
    unchanged file is not written again; one made anew (same size, new bytes) is."""
    import os

    from persona_lib import export

    work, drive = tmp_path / "local", tmp_path / "drive"
    work.mkdir()
    (work / "model.gguf").write_bytes(b"a" * 1000)
    (work / "summary.json").write_text("{}")
    kept = export.keep([work / "model.gguf", work / "summary.json"], drive)
    assert [p.read_bytes() for p in kept] == [b"a" * 1000, b"{}"]
    copied = {p.name: p.stat().st_mtime_ns for p in kept}

    copies = []
    real_copy = export._copy_with_progress
    monkeypatch.setattr(export, "_copy_with_progress",
                        lambda src, dest: copies.append(src.name) or real_copy(src, dest))
    export.keep([work / "model.gguf", work / "summary.json"], drive)
    assert copies == [] and {p.name: p.stat().st_mtime_ns for p in kept} == copied
    assert "unchanged since: model.gguf, summary.json" in capsys.readouterr().out

    (work / "model.gguf").write_bytes(b"b" * 1000)  # remade: same size, new time
    stamp = copied["model.gguf"] + 5_000_000_000
    os.utime(work / "model.gguf", ns=(stamp, stamp))
    export.keep([work / "model.gguf"], drive)
    assert (drive / "model.gguf").read_bytes() == b"b" * 1000 and copies == ["model.gguf"]
    assert export.keep([drive / "model.gguf"], drive) == [drive / "model.gguf"]  # already there: nothing to copy
