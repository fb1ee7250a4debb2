"""The Skill-First loop: the learner's LEARNING-SPEC and skill scaffold, filled lesson by lesson."""

from persona_lib import io, skillfirst


def test_scaffold_has_the_seeds_sections_and_a_placeholder_per_lesson(tmp_path):
    files = skillfirst.start(tmp_path, "Coach Quill")
    spec = files["learning_spec"].read_text()
    for heading in ("What I want to learn", "Why it matters", "Success criteria", "Constraints",
                    "Questions I need answered", "What I already know"):
        assert f"## {heading}" in spec
    assert spec.count("- [ ] ") == 7
    skill = files["skill"].read_text()
    assert skill.startswith("---\nname: persona-tuner\ndescription: ") and "Coach Quill" in skill
    assert "## When not to use" in skill and "Fewer than about 100" in skill
    for lesson, title in skillfirst.SECTIONS.items():
        assert f"[TO BE LEARNED: {lesson} - {title}]" in skill
    assert skillfirst.progress(tmp_path) == {lesson: False for lesson in skillfirst.SECTIONS}


def test_fill_puts_the_lessons_findings_in_place_and_never_overwrites(tmp_path):
    files = skillfirst.start(tmp_path, "TaskMaster")
    files["learning_spec"].write_text("mine")
    skillfirst.start(tmp_path, "TaskMaster")
    assert files["learning_spec"].read_text() == "mine"  # the learner's file stays
    assert skillfirst.fill(tmp_path, "L04", "rank 16, lr 1e-3: a voice is a small change") == \
        "rank 16, lr 1e-3: a voice is a small change"
    assert skillfirst.fill(tmp_path, "L04", "a second draft") == "rank 16, lr 1e-3: a voice is a small change"
    assert skillfirst.progress(tmp_path)["L04"] and not skillfirst.progress(tmp_path)["L05"]


def test_drafts_come_from_the_lessons_files(tmp_path):
    run = tmp_path / "taskmaster"
    assert "not in" in skillfirst.draft(run, "L04")
    # The skill cell run before the lesson's files exist: the placeholder stays for the real draft.
    assert "not in" in skillfirst.fill(tmp_path, "L04", skillfirst.draft(run, "L04"))
    assert not skillfirst.progress(tmp_path)["L04"]
    io.write_json(run / "adapter" / "manifest.json", {
        "backend": "transformers", "precision": "bf16", "steps": 44, "metrics": {"eval_loss": 3.1},
        "config": {"model_id": "embedded", "lora_r": 16, "lora_alpha": 16, "learning_rate": 0.001, "num_epochs": 2.0}})
    text = skillfirst.draft(run, "L04")
    assert "LoRA r=16" in text and "44 updates" in text and "lr=0.001" in text
