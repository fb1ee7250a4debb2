"""What notebook 06 writes in smoke mode: adapters for every persona and the conditioned one,
the bleed matrices of both designs beside the classifier's ceiling, the blend curve, routing."""

import json
from pathlib import Path

PERSONAS = ["taskmaster", "captain_codebeard", "zen_coder"]


def check(run: Path) -> None:
    from persona_lib import adapters, multi

    out = run / "multi"
    for slug in PERSONAS:
        assert adapters.trained_on(run.parent / slug / "adapter", "tiny"), slug
    conditioned = json.loads((out / "conditioned_adapter" / "manifest.json").read_text())
    assert conditioned["base_model"] == "tiny"
    data = conditioned["data"]
    assert data["train_examples"] + data["eval_examples"] + data["dropped"] == 3 * 4  # smoke: 4 records a persona

    bleed = json.loads((out / "bleed.json").read_text())
    n_prompts = len(bleed["prompts"])
    assert n_prompts == 3  # one held-out prompt per persona, pooled
    assert bleed["ceiling"]["rows"] == bleed["ceiling"]["labels"] == PERSONAS
    recall = bleed["classifier"]["recall"]
    assert bleed["ceiling"]["diagonal"] == {slug: recall[slug] for slug in PERSONAS}
    for design in ("separate", "conditioned"):
        m = bleed[design]
        assert m["rows"] == PERSONAS and m["labels"][:3] == PERSONAS
        assert all(sum(row) == n_prompts for row in m["counts"])
        assert all(0 <= m["diagonal"][s] <= 1 for s in PERSONAS)
        for slug in PERSONAS:
            rows = [json.loads(line) for line in (out / "replies" / f"{design}__{slug}.jsonl").read_text().splitlines()]
            assert [r["id"] for r in rows] == bleed["prompts"] and all(isinstance(r["reply"], str) for r in rows)
    assert (out / "bleed.png").stat().st_size > 20_000

    blend = json.loads((out / "blend.json").read_text())
    assert [r["weight"] for r in blend["rows"]] == list(multi.BLEND_WEIGHTS)
    assert (blend["a"], blend["b"], blend["combination"]) == ("taskmaster", "captain_codebeard", "cat")
    assert all(len(r["replies"]) == 3 and 0 <= r["p_b"] <= 1 for r in blend["rows"])
    assert blend["trend"] in ("rises monotonically", "flat", "NOT monotonic")
    assert (out / "blend.png").stat().st_size > 10_000

    routing = json.loads((out / "routing.json").read_text())
    assert routing["diagonal"]["taskmaster"] >= 0.6  # the readable default rule does route TaskMaster's prompts
    summary = json.loads((out / "summary.json").read_text())
    assert summary["switch_s"] > 0 and summary["reload_s"] > 0
    assert set(summary["train_s"]) == {*PERSONAS, "conditioned"}


def check_skill(run: Path) -> None:
    """The lesson's section of the learner's skill (beside the run folders) is filled."""
    from persona_lib import skillfirst

    assert skillfirst.progress(run.parent)["L06"], "the Update your skill cell did not fill L06"
