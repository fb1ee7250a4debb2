"""A persona the project does not ship, through all seven lessons: Chef Rosa, a spec and 24
conversations in the plain {"messages": [...]} format (tests/data/own_persona), as a learner
brings them. Both lanes run it: `run_chain(lesson, runs)` takes the lane's way of running one
notebook with parameters, and checks that an edit made after lesson 1 reaches lessons 4, 5 and 7
and that lesson 4 trained on lesson 2's split; a second Run all of lesson 4 does not train again."""

import json
from pathlib import Path

OWN = Path(__file__).resolve().parent.parent / "data" / "own_persona"
NEW_PHRASE = "low and slow"
NEW_LEVEL = "Like a friend at the stove, who laughs with you about the burnt toast."


def edit_as_the_form_saves(saved: Path) -> None:
    """A new signature phrase and a reworded rubric level, written as lesson 1's Save writes them."""
    from persona_lib.spec import load_spec, save_spec

    spec = load_spec(saved)
    spec.signature_vocabulary.append(NEW_PHRASE)
    spec.traits[0].levels[5] = NEW_LEVEL
    save_spec(spec, saved)


def run_chain(lesson, runs: Path) -> None:
    """`lesson(number, **parameters)` runs notebook NN_*.ipynb with SMOKE on and the lane's runs
    folder; `runs` is that folder as this process sees it."""
    from persona_lib.io import read_jsonl

    lesson("01", PERSONA=str(OWN / "chef_rosa.yaml"))
    run = runs / "chef_rosa"
    edit_as_the_form_saves(run / "spec" / "spec.yaml")
    lesson("02", DATA=str(OWN / "conversations.jsonl"))
    mine = read_jsonl(run / "data" / "conversations.jsonl")
    assert len(mine) == 24 and {r["persona"] for r in mine} == {"chef_rosa"}
    for number in ("03", "04", "05", "06", "07"):
        lesson(number)

    manifest = json.loads((run / "adapter" / "manifest.json").read_text())
    split = read_jsonl(run / "data" / "train.jsonl")  # lesson 2's split, all of it: the classifier never learns
    assert len(split) == 20 and not read_jsonl(run / "data" / "classifier_reserved.jsonl")  # a new persona
    assert manifest["data"]["train_examples"] == min(len(split), 16)  # smoke mode trains on the first 16
    style = json.loads((run / "adapter" / "style_check.json").read_text())
    assert NEW_PHRASE in style["signature_vocabulary"]
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["persona"] == "chef_rosa" and NEW_PHRASE in report["spec"]["signature_vocabulary"]
    assert report["spec"]["traits"][0]["levels"]["5"] == NEW_LEVEL
    assert all(i.startswith("chef_rosa-") for i in report["prompts"]["ids"])  # the spec's own questions
    export = json.loads((run / "export" / "summary.json").read_text())
    assert export["persona"] == "chef_rosa" and NEW_PHRASE in export["signature_vocabulary"]

    # Run all again: lesson 4 loads the adapter it finished rather than training it again (train()
    # removes the manifest when it starts and writes every file anew when it ends).
    written = {p.name: p.stat().st_mtime_ns for p in (run / "adapter").iterdir() if p.is_file()}
    lesson("04")
    kept = {p.name: p.stat().st_mtime_ns for p in (run / "adapter").iterdir() if p.is_file()}
    notes = ("before_after.jsonl", "style_check.json")  # the lesson's notes on the replies, written each time
    assert {k: v for k, v in kept.items() if k not in notes} == {k: v for k, v in written.items() if k not in notes}
