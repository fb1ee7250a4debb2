"""What notebook 07 writes in smoke mode: the merged folder, f16 and Q4_K_M GGUFs with their real
tensor types, a base GGUF with a GGUF LoRA per persona, export parity, the served reply, and a
Modelfile that names a file that exists."""

import json
from pathlib import Path

PERSONAS = ["taskmaster", "captain_codebeard", "zen_coder"]


def check(run: Path) -> None:
    from persona_lib import colab, export, ollama

    kept = run / "export"
    # On Colab the large files are made on the runtime's local disk (export.work_dir), and what
    # the learner keeps is copied to the run folder on Drive.
    out = kept if (kept / "merged").is_dir() else Path(colab.LOCAL_DISK) / "export" / run.name
    for name in ("taskmaster.Q4_K_M.gguf", "Modelfile", "Modelfile.adapter", "summary.json", "parity.json",
                 "parity.jsonl", "tensor_types.png", *(f"{slug}.lora.gguf" for slug in PERSONAS)):
        assert (kept / name).is_file() and (kept / name).stat().st_size == (out / name).stat().st_size, name
    assert (out / "merged" / "config.json").is_file() and (out / "merged" / "tokenizer.json").is_file()
    assert not list(out.glob(".*.partial")), "a step left a partial output behind"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "tiny"
    assert set(summary["files"]) == {"taskmaster.f16.gguf", "taskmaster.Q4_K_M.gguf", "base.f16.gguf",
                                     *(f"{slug}.lora.gguf" for slug in PERSONAS)}
    for name, size in summary["files"].items():
        assert (out / name).stat().st_size == size > 0

    types = summary["tensor_types"]
    assert types["f16"] == export.tensor_types(out / "taskmaster.f16.gguf")
    assert types["f16"]["tensors"] == {"F16": 15, "F32": 5}
    q4 = types["Q4_K_M"]
    assert q4["file_type"] == "Q4_K_M" and "Q4_K" not in q4["tensors"]  # 64-wide rows: every k-quant falls back
    assert sum(q4["tensors"].values()) == 20
    assert (out / "tensor_types.png").stat().st_size > 10_000

    check_ = summary["chat_check"]
    assert check_["ok"] and check_["eos_token"] == "<|im_end|>"
    assert set(summary["switched"]) == {*PERSONAS, "base"}
    if not summary["adapter_trained"]:  # quick random adapters are strong enough to change every reply
        assert len(set(summary["switched"].values())) == 4, "each persona adapter and the bare base should differ"
    served = summary["served"]
    assert served["base_url"].startswith("http://127.0.0.1:") and isinstance(served["reply"], str)
    assert served["finish_reason"] in ("stop", "length")

    parity = json.loads((out / "parity.json").read_text())
    assert parity["n"] == 2 and set(parity["systems"]) == {"hf", "f16", "Q4_K_M"}
    for name in ("f16", "Q4_K_M"):
        s = parity["systems"][name]
        assert s["prompt_tokens_equal"] == 1.0
        assert 0.0 <= s["token_agreement"] <= 1.0
        diff = s["signature_diff_vs_hf"]
        assert diff["low"] <= diff["diff"] <= diff["high"]
    rows = [json.loads(line) for line in (out / "parity.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(r["Q4_K_M_reply"], str) for r in rows)

    modelfile = ollama.parse_modelfile((out / "Modelfile").read_text())
    assert (out / modelfile["from"]).is_file() and modelfile["from"].endswith("taskmaster.Q4_K_M.gguf")
    assert modelfile["template"].endswith("<|im_start|>assistant\n")
    assert modelfile["parameters"]["stop"] == ["<|im_end|>", "<|im_start|>"]
    adapter = ollama.parse_modelfile((out / "Modelfile.adapter").read_text())
    assert (out / adapter["from"]).is_file() and (out / adapter["adapter"]).is_file()
    assert summary["ollama"] == ["ollama create taskmaster -f Modelfile", "ollama run taskmaster"]


def check_skill(run: Path) -> None:
    """The lesson's section of the learner's skill (beside the run folders) is filled."""
    from persona_lib import skillfirst

    assert skillfirst.progress(run.parent)["L07"], "the Update your skill cell did not fill L07"
