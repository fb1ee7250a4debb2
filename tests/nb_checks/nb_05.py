"""What notebook 05 writes in smoke mode (no OpenAI key in CI: deterministic measures only)."""

import json
from pathlib import Path

SYSTEMS = {"base", "base_prompted", "tuned", "tuned_prompted"}


def check(run: Path) -> None:
    ev = run / "eval"
    report = json.loads((ev / "report.json").read_text())
    assert report["persona"] == "taskmaster" and Path(report["adapter"]).name in ("adapter", "placeholder_adapter")
    assert set(report["systems"]) == SYSTEMS and report["prompts"]["n"] == 4
    assert set(report["prompts"]["kinds"]) == {"ordinary", "ooc", "multiturn"}  # a small subset keeps every kind
    for system in report["systems"].values():
        for key in ("signature_rate", "avoided_rate", "generic_rate", "persona_probability"):
            ci = system[key]
            assert ci["n"] == 4 and 0 <= ci["low"] <= ci["mean"] <= ci["high"] <= 1
        assert set(system["persona_distribution"]) == {"taskmaster", "captain_codebeard", "zen_coder"}
    assert report["classifier"]["heldout"]["accuracy"]["mean"] > 0.6
    k = report["knowledge"]
    assert k["questions"] == 3 and k["base"]["facts"] == k["tuned"]["facts"] > 0
    assert report["judge"]["used"] is False and "deterministic" in report["judge"]["why"]
    assert {t: type(v["met"]) for t, v in report["targets"].items()} == {
        "persona_consistency": bool, "knowledge": bool, "diversity": bool}
    drift = report["drift"]["tuned"]
    assert drift["turns"] == 5 and drift["dialogues"] == 1 and len(drift["per_turn"]) == 5
    rows = [json.loads(line) for line in (ev / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(SYSTEMS <= set(r) for r in rows)
    summary = (ev / "summary.md").read_text()
    assert "## Targets" in summary and "deterministic measures only" in summary
    for name in ("persona_measures", "lengths", "persona_probabilities", "drift", "knowledge"):
        assert (ev / report["figures"][name]).stat().st_size > 5000


def check_skill(run: Path) -> None:
    """The lesson's section of the learner's skill (beside the run folders) is filled."""
    from persona_lib import skillfirst

    assert skillfirst.progress(run.parent)["L05"], "the Update your skill cell did not fill L05"
