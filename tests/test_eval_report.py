"""Reading an evaluation as a learner: replies side by side with what the classifier and the
judge said of each, and the learner's blind picks against both."""

from persona_lib import io
from persona_lib.eval_report import learner_agreement, side_by_side, side_by_side_markdown
from persona_lib.widgets import BlindAB


def write_eval(folder, *, judged: bool):
    ids = ["p1", "p2", "p3"]
    io.write_jsonl(folder / "answers.jsonl", [
        {"id": i, "kind": "ordinary", "prompt": f"question {i}", "base_prompted": f"base reply {i}",
         "tuned": f"tuned reply {i}"} for i in ids])
    judge = {"used": False, "why": "no judge given"}
    if judged:
        verdict = lambda i, overall: {"id": i, "overall": overall, "rationales": {"warm": f"because {i}"}}  # noqa: E731
        judge = {"used": True, "prompts": ["p3", "p1"],
                 "verdicts": {"tuned": [verdict("p3", 4.0), verdict("p1", 2.0)],
                              "base_prompted": [verdict("p3", 3.0), verdict("p1", 3.0)]},
                 "pairwise": {"tuned_vs_base_prompted": {"verdicts": [
                     {"id": "p3", "outcome": "x", "consistent": True},
                     {"id": "p1", "outcome": "tie", "consistent": False}]}}}
    io.write_json(folder / "report.json", {
        "prompts": {"ids": ids}, "judge": judge,
        "per_reply": {"base_prompted": {"persona_probability": [0.2, 0.5, 0.3]},
                      "tuned": {"persona_probability": [0.6, 0.4, 0.7]}}})


def test_side_by_side_puts_the_judged_prompts_first_with_their_verdicts(tmp_path):
    write_eval(tmp_path, judged=True)
    rows = side_by_side(tmp_path, n=3)
    assert [r["id"] for r in rows] == ["p3", "p1", "p2"]
    assert rows[0]["tuned"] == {"reply": "tuned reply p3", "persona_probability": 0.7, "judge_overall": 4.0,
                                "judge_rationales": {"warm": "because p3"}}
    assert rows[0]["judge_pick"] == "tuned" and rows[1]["judge_pick"] == "tie" and rows[2]["judge_pick"] is None
    text = side_by_side_markdown(rows)
    assert "**Tuned, no prompt:** tuned reply p3" in text and "judge overall 4.0" in text
    assert "the order decided" in text  # p1's two orders disagreed


def test_without_a_judge_the_first_prompts_and_the_classifier_alone(tmp_path):
    write_eval(tmp_path, judged=False)
    rows = side_by_side(tmp_path, n=2)
    assert [r["id"] for r in rows] == ["p1", "p2"] and all(r["judge_pick"] is None for r in rows)
    assert "classifier P(persona) 0.60" in side_by_side_markdown(rows)


def test_blind_picks_are_unmasked_and_compared_with_judge_and_classifier(tmp_path):
    write_eval(tmp_path, judged=True)
    rows = side_by_side(tmp_path, n=3)
    blind = BlindAB(rows, seed=1)
    shown = []
    for row in rows:  # always pick whichever side shows the tuned reply
        shown.append((blind.reply_a.value, blind.reply_b.value))
        blind.pick("A" if blind.tuned_is_a[row["id"]] else "B")
    assert blind.picks == {"p3": "tuned", "p1": "tuned", "p2": "tuned"}
    assert all(("tuned reply" in a) != ("tuned reply" in b) for a, b in shown)  # one of each, unlabelled
    assert all(a.startswith("<p><b>A:</b> ") and b.startswith("<p><b>B:</b> ") for a, b in shown)  # no model named
    assert all(button.disabled for button in blind.buttons) and "Done" in blind.progress.value
    result = blind.results()
    # judge: p3 tuned (agree), p1 tie (left out); classifier: p3 0.7>0.3, p1 0.6>0.2, p2 0.4<0.5
    assert result["with_judge"] == {"n": 1, "agree": 1, "share": 1.0}
    assert result["with_classifier"] == {"n": 3, "agree": 2, "share": 2 / 3}
    assert learner_agreement({"p1": "tie"}, rows)["with_judge"]["share"] is None


def test_blind_picks_survive_running_the_cell_again_while_the_replies_are_the_same(tmp_path):
    """Lesson 5: Run all after judging, or running the widget's cell again, keeps the picks; a
    prompt whose replies changed (the model was retrained) is asked again."""
    write_eval(tmp_path, judged=True)
    rows = side_by_side(tmp_path, n=3)
    saved = tmp_path / "blind_picks.json"
    first = BlindAB(rows, seed=1, save_to=saved)
    first.pick("A")
    first.pick("tie")
    again = BlindAB(rows, seed=1, save_to=saved)
    assert again.picks == first.picks and len(again.picks) == 2
    assert again.index == 2 and "Prompt 3 of 3" in again.progress.value
    again.pick("B")
    assert BlindAB(rows, seed=1, save_to=saved).picks == again.picks  # all three, and the widget says done

    retrained = [dict(rows[0], tuned={**rows[0]["tuned"], "reply": "a new tuned reply"}), *rows[1:]]
    later = BlindAB(retrained, seed=1, save_to=saved)
    assert set(later.picks) == {rows[1]["id"], rows[2]["id"]} and later.index == 0
    assert BlindAB(rows, seed=1).picks == {}  # without save_to nothing is read
    saved.write_text("{not json")  # cut off mid-write, or edited by hand
    assert BlindAB(rows, seed=1, save_to=saved).picks == {}
