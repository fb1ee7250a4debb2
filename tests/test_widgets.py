"""The spec editor, driven headless: set widget values, read the spec, messages, preview and file."""

from __future__ import annotations

import html
import subprocess
import sys

import pytest

pytest.importorskip("ipywidgets")

from persona_lib.spec import load_spec, save_spec, system_prompt  # noqa: E402
from persona_lib.widgets import spec_editor  # noqa: E402


@pytest.fixture
def editor(tmp_path):
    return spec_editor("taskmaster", path=tmp_path / "tm.yaml")


def shown(editor) -> str:
    return html.unescape(editor.messages.value)


def test_import_persona_lib_does_not_import_ipywidgets():
    code = "import sys, persona_lib, persona_lib.spec, persona_lib.widgets; assert 'ipywidgets' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_opens_valid_with_the_prompt_preview(editor):
    spec = load_spec("taskmaster")
    assert editor.spec == spec
    assert editor.problems == []
    assert "the spec is valid" in shown(editor)
    assert editor.preview.value == system_prompt(spec)
    assert editor.save_button.disabled is False
    assert "trait weights add up to 1.00" in editor.stats.value


def test_text_fields_edit_the_spec_and_preview(editor):
    editor.fields["name"].value = "PlanPal"
    editor.fields["tone"].value = "calm and brief"
    assert editor.spec.name == "PlanPal" and editor.spec.tone == "calm and brief"
    assert editor.preview.value.startswith("You are PlanPal, ")
    assert "Tone: calm and brief." in editor.preview.value


def test_invalid_input_shows_the_message_and_disables_save(editor):
    editor.fields["slug"].value = "Plan Pal"
    assert editor.spec is None
    assert "slug: must be snake_case" in shown(editor) and "try 'plan_pal'" in shown(editor)
    assert "1 problem to fix" in shown(editor)
    assert editor.save_button.disabled is True
    assert "preview appears once" in editor.preview.value
    editor.fields["name"].value = ""
    assert "2 problems to fix" in shown(editor) and "name: is empty" in shown(editor)
    editor.fields["slug"].value = "plan_pal"
    editor.fields["name"].value = "PlanPal"
    assert editor.spec is not None and editor.save_button.disabled is False


def test_list_fields_are_one_item_per_line(editor):
    editor.fields["avoid"].value = "sarcasm\n\n  walls of text  \n"
    assert editor.spec.avoid == ["sarcasm", "walls of text"]
    editor.fields["signature_vocabulary"].value = "momentum\nnext step\nMomentum"
    assert "signature_vocabulary[2]: duplicates signature_vocabulary[0] ('Momentum')" in shown(editor)
    editor.fields["topics"].value = "focus\nDeep Work"
    assert "topics[1]: must be a snake_case label" in shown(editor)


def test_trait_fields_and_levels(editor):
    row = editor.trait_rows[0]
    row["levels"][3].value = ""
    assert "traits[0].levels[3]: is empty; write what a 3 looks like for this trait" in shown(editor)
    row["levels"][3].value = "Some encouragement, a little generic."
    row["weight"].value = 0.5
    row["description"].value = "Cheers the user on."
    assert editor.spec.traits[0].levels[3] == "Some encouragement, a little generic."
    assert editor.spec.traits[0].weight == 0.5
    assert editor.spec.traits[0].description == "Cheers the user on."
    assert "trait weights add up to 1.20" in editor.stats.value
    row["weight"].value = 3
    assert "traits[0].weight: must be between 0 and 1, got 3" in shown(editor)
    assert editor.spec is None and editor.save_button.disabled
    row["weight"].value = 0.5
    editor.trait_rows[1]["name"].value = "ENCOURAGING"
    assert "traits[1].name: 'ENCOURAGING' duplicates traits[0].name" in shown(editor)


def test_add_and_remove_a_trait_with_the_buttons(editor):
    editor.add_trait_button.click()
    assert len(editor.trait_rows) == 5 and len(editor.traits_box.children) == 5
    assert editor.spec is None and "traits[4].name: is empty" in shown(editor)
    row = editor.trait_rows[4]
    row["name"].value = "punctual"
    row["description"].value = "Cares about dates."
    row["weight"].value = 0.1
    for score, box in row["levels"].items():
        box.value = f"Punctuality at level {score}."
    assert editor.spec.traits[4].name == "punctual"
    assert editor.spec.traits[4].levels == {s: f"Punctuality at level {s}." for s in range(1, 6)}
    assert "punctual" in editor.preview.value
    editor.trait_rows[0]["remove"].click()
    assert [t.name for t in editor.spec.traits] == ["productivity_focused", "professional", "friendly", "punctual"]
    assert len(editor.traits_box.children) == 4


def test_removing_every_trait_is_reported(editor):
    while editor.trait_rows:
        editor.trait_rows[0]["remove"].click()
    assert "traits: must be a non-empty list of traits" in shown(editor)


def test_examples_are_editable(editor):
    editor.example_rows[0]["user"].value = "Plan my Monday."
    assert editor.spec.examples[0]["user"] == "Plan my Monday."
    editor.add_example_button.click()
    assert "examples[3].user: is empty" in shown(editor)
    editor.example_rows[3]["user"].value = "hi"
    editor.example_rows[3]["assistant"].value = "Hi. What's the first task on your list today?"
    assert editor.spec.examples[3] == {"user": "hi", "assistant": "Hi. What's the first task on your list today?"}
    for _ in range(4):
        editor.example_rows[0]["remove"].click()
    assert editor.spec.examples == []


def test_save_button_writes_yaml_that_loads_back(editor, tmp_path):
    editor.fields["name"].value = "PlanPal"
    editor.trait_rows[0]["levels"][5].value = "Level five, edited."
    editor.save_button.click()
    assert "Saved to" in editor.status.value
    saved = load_spec(tmp_path / "tm.yaml")
    assert saved == editor.spec
    assert saved.name == "PlanPal" and saved.traits[0].levels[5] == "Level five, edited."


def test_invalid_form_never_overwrites_the_saved_file(editor, tmp_path):
    path = save_spec(load_spec("taskmaster"), tmp_path / "tm.yaml")
    good = path.read_bytes()
    editor.trait_rows[2]["levels"][1].value = ""
    editor.save_button.click()  # handlers run even on a disabled button: the editor must refuse
    assert "Not saved" in editor.status.value and "traits[2].levels[1]: is empty" in html.unescape(editor.status.value)
    assert path.read_bytes() == good


def test_default_save_path_follows_the_slug(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    editor = spec_editor(load_spec("zen_coder"))
    editor.fields["slug"].value = "my_zen"
    editor.save_button.click()
    assert load_spec(tmp_path / "my_zen.yaml").slug == "my_zen"
    editor.path_box.value = str(tmp_path / "elsewhere.yaml")
    assert editor.save().name == "elsewhere.yaml"


def test_a_failed_write_is_shown_not_raised(editor, tmp_path):
    (tmp_path / "a_dir.yaml").mkdir()
    editor.path_box.value = str(tmp_path / "a_dir.yaml")
    editor.save_button.click()
    assert "Not saved" in editor.status.value


def test_the_editor_displays_itself_as_its_form(monkeypatch):
    """A cell ending in the editor shows the form, with ipywidgets 7 (Colab's) and 8 alike
    (tests/test_colab_lane.py runs this file under 7.7.1)."""
    import IPython.display

    from persona_lib.spec import load_spec
    from persona_lib.widgets import SpecEditor

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    editor = SpecEditor(load_spec("taskmaster"))
    editor._ipython_display_()
    assert shown == [editor.widget]
