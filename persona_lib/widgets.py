"""An ipywidgets editor for a persona spec, with live validation and a system-prompt preview.

    editor = spec_editor("taskmaster", path="my_taskmaster.yaml")
    editor            # shows the form in a notebook
    editor.spec       # the current PersonaSpec, or None while the form has problems

ipywidgets is imported inside the editor so that `import persona_lib` stays light. The editor
is a class because it holds state the learner changes: the trait and example rows they add
and remove. Everything it does is driven by widget values, so tests run it without a browser.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from persona_lib.spec import (
    SCORES,
    PersonaSpec,
    SpecError,
    SpecProblem,
    load_spec,
    save_spec,
    spec_from_dict,
    system_prompt,
    validate_spec,
)

_TEXT = ("name", "slug")
_PROSE = ("description", "tone", "knowledge_domain")
_LISTS = ("signature_vocabulary", "avoid", "do", "dont", "topics")


def _lines(text: str) -> list[str]:
    """One item per non-blank line (a blank line is not an item, so it is never an 'empty entry')."""
    return [line.strip() for line in text.splitlines() if line.strip()]


class SpecEditor:
    """A form over every field of a PersonaSpec; `spec`, `problems` and `save()` reflect its values."""

    def __init__(self, spec: PersonaSpec, path: str | os.PathLike | None = None):
        import ipywidgets as w

        self._w = w
        full = {"layout": w.Layout(width="95%")}
        self.fields = {key: w.Text(value=getattr(spec, key), description=key, **full) for key in _TEXT}
        self.fields |= {key: w.Textarea(value=getattr(spec, key), description=key, rows=2, **full)
                        for key in _PROSE}
        self.fields |= {
            key: w.Textarea(value="\n".join(getattr(spec, key)), description=key, rows=5,
                            placeholder="one item per line", **full)
            for key in _LISTS
        }
        for widget in self.fields.values():
            widget.style.description_width = "150px"
            widget.observe(self._changed, names="value")

        self.trait_rows: list[dict] = []
        self.traits_box = w.VBox()
        for trait in spec.traits:
            self.add_trait(trait.name, trait.description, trait.weight, trait.levels, refresh=False)
        self.add_trait_button = w.Button(description="Add trait", icon="plus")
        self.add_trait_button.on_click(lambda _: self.add_trait())

        self.example_rows: list[dict] = []
        self.examples_box = w.VBox()
        for example in spec.examples:
            self.add_example(example["user"], example["assistant"], refresh=False)
        self.add_example_button = w.Button(description="Add example", icon="plus")
        self.add_example_button.on_click(lambda _: self.add_example())

        self.messages = w.HTML()  # validation problems, or a green tick
        self.preview = w.Textarea(disabled=True, rows=12, description="system prompt", **full)
        self.stats = w.HTML()  # prompt length and trait weight total
        # Empty means "<slug>.yaml in the current folder", following the slug as it is edited.
        self.path_box = w.Text(value=str(path) if path is not None else "", description="save to",
                               placeholder="<slug>.yaml", **full)
        self.path_box.observe(self._changed, names="value")
        self.save_button = w.Button(description="Save YAML", icon="save", button_style="success")
        self.save_button.on_click(self._save_clicked)
        self.status = w.HTML()  # result of the last save

        self.spec: PersonaSpec | None = None
        self.problems: list[SpecProblem] = []
        self.widget = w.VBox([
            w.HTML("<h3>Persona</h3>"), *[self.fields[k] for k in (*_TEXT, *_PROSE)],
            w.HTML("<h3>Traits</h3>"), self.traits_box, self.add_trait_button,
            w.HTML("<h3>Voice and rules</h3>"), *[self.fields[k] for k in _LISTS],
            w.HTML("<h3>Examples</h3>"), self.examples_box, self.add_example_button,
            w.HTML("<h3>Check</h3>"), self.messages, self.preview, self.stats,
            w.HBox([self.path_box, self.save_button]), self.status,
        ])
        self.refresh()

    def _ipython_display_(self):
        """Show the form when the editor is a cell's last value. ipywidgets 7 (Colab's) displays
        widgets through this hook and 8 through `_repr_mimebundle_`; `display` serves both."""
        from IPython.display import display

        display(self.widget)

    # ------------------------------------------------------------------ rows

    def add_trait(self, name: str = "", description: str = "", weight: float = 0.0,
                  levels: dict[int, str] | None = None, refresh: bool = True) -> dict:
        """Append a trait row (blank by default: validation then says what to fill in)."""
        w = self._w
        levels = levels or {}
        row = {
            "name": w.Text(value=name, description="name"),
            "description": w.Textarea(value=description, description="description", rows=2,
                                      layout=w.Layout(width="95%")),
            # A plain number box, not a slider: a slider would silently clamp a typed 3 to 1,
            # and the learner should see the validation message instead.
            "weight": w.FloatText(value=weight, step=0.05, description="weight"),
            "levels": {s: w.Textarea(value=levels.get(s, ""), description=f"level {s}", rows=2,
                                     layout=w.Layout(width="95%")) for s in SCORES},
            "remove": w.Button(description="Remove trait", icon="trash", button_style="warning"),
        }
        for widget in (row["name"], row["description"], row["weight"], *row["levels"].values()):
            widget.observe(self._changed, names="value")
        row["remove"].on_click(lambda _: self.remove_trait(self.trait_rows.index(row)))
        row["box"] = w.VBox([w.HBox([row["name"], row["weight"], row["remove"]]), row["description"],
                             *row["levels"].values()],
                            layout=w.Layout(border="1px solid #ddd", padding="4px", margin="4px 0"))
        self.trait_rows.append(row)
        self.traits_box.children = [r["box"] for r in self.trait_rows]
        if refresh:
            self.refresh()
        return row

    def remove_trait(self, index: int) -> None:
        del self.trait_rows[index]
        self.traits_box.children = [r["box"] for r in self.trait_rows]
        self.refresh()

    def add_example(self, user: str = "", assistant: str = "", refresh: bool = True) -> dict:
        w = self._w
        row = {
            "user": w.Textarea(value=user, description="user", rows=2, layout=w.Layout(width="95%")),
            "assistant": w.Textarea(value=assistant, description="assistant", rows=5,
                                    layout=w.Layout(width="95%")),
            "remove": w.Button(description="Remove example", icon="trash", button_style="warning"),
        }
        row["user"].observe(self._changed, names="value")
        row["assistant"].observe(self._changed, names="value")
        row["remove"].on_click(lambda _: self.remove_example(self.example_rows.index(row)))
        row["box"] = w.VBox([row["user"], row["assistant"], row["remove"]],
                            layout=w.Layout(border="1px solid #ddd", padding="4px", margin="4px 0"))
        self.example_rows.append(row)
        self.examples_box.children = [r["box"] for r in self.example_rows]
        if refresh:
            self.refresh()
        return row

    def remove_example(self, index: int) -> None:
        del self.example_rows[index]
        self.examples_box.children = [r["box"] for r in self.example_rows]
        self.refresh()

    # ------------------------------------------------------------------ state

    def form_data(self) -> dict:
        """The form as a plain spec mapping (what YAML would hold), valid or not."""
        data = {key: self.fields[key].value for key in (*_TEXT, *_PROSE)}
        data |= {key: _lines(self.fields[key].value) for key in _LISTS}
        data["traits"] = [
            {"name": r["name"].value, "description": r["description"].value, "weight": r["weight"].value,
             "levels": {s: r["levels"][s].value for s in SCORES}}
            for r in self.trait_rows
        ]
        data["examples"] = [{"user": r["user"].value, "assistant": r["assistant"].value}
                            for r in self.example_rows]
        return data

    @property
    def save_path(self) -> Path:
        return Path(self.path_box.value.strip() or f"{self.fields['slug'].value.strip() or 'persona'}.yaml")

    def refresh(self) -> None:
        """Re-validate the form and update messages, preview and the Save button."""
        data = self.form_data()
        self.problems = validate_spec(data)
        self.spec = None if self.problems else spec_from_dict(data)
        if self.problems:
            n = len(self.problems)
            items = "".join(f"<li>{html.escape(str(p))}</li>" for p in self.problems)
            self.messages.value = (f"<b style='color:#b00020'>{n} problem{'s' if n != 1 else ''} to fix "
                                   f"before saving:</b><ul>{items}</ul>")
            self.preview.value = "(the preview appears once the problems above are fixed)"
        else:
            self.messages.value = "<b style='color:#1b7f3b'>&#10003; the spec is valid</b>"
            self.preview.value = system_prompt(self.spec)
        total = sum(r["weight"].value for r in self.trait_rows)
        prompt = self.preview.value if self.spec else ""
        self.stats.value = (f"prompt: {len(prompt)} characters, about {len(prompt) // 4} tokens; "
                            f"trait weights add up to {total:.2f}"
                            + ("" if abs(total - 1) < 1e-6 else " (the shipped specs use 1.00)"))
        self.save_button.disabled = bool(self.problems)
        self.save_button.tooltip = ("fix the problems above first" if self.problems
                                    else f"write {self.save_path}")

    def _changed(self, _change) -> None:
        self.refresh()

    def save(self) -> Path:
        """Write the current spec to the save path (atomic); raise SpecError while the form is invalid."""
        if self.spec is None:
            raise SpecError(self.problems, self.save_path)
        return save_spec(self.spec, self.save_path)

    def _save_clicked(self, _button) -> None:
        try:
            path = self.save()
        except (SpecError, OSError) as e:  # shown to the learner, never raised into the notebook
            self.status.value = f"<pre style='color:#b00020'>Not saved: {html.escape(str(e))}</pre>"
            return
        self.status.value = f"<span style='color:#1b7f3b'>Saved to {html.escape(str(path))}</span>"


def spec_editor(spec: PersonaSpec | str | os.PathLike, path: str | os.PathLike | None = None) -> SpecEditor:
    """An editor for ``spec`` (a PersonaSpec, a YAML path or a shipped slug); Save writes ``path``.

    Without ``path`` the editor saves to ``<slug>.yaml`` in the current folder, never over the
    shipped spec.
    """
    return SpecEditor(spec if isinstance(spec, PersonaSpec) else load_spec(spec), path)


class BlindAB:
    """The learner as a judge: each prompt's two replies (base + persona prompt, tuned without
    one) shown as A and B in a seeded random order, three buttons to pick the more in-character
    one or a tie, and the next prompt. `picks` holds {prompt id: "tuned" | "base_prompted" |
    "tie"}; `results()` compares them with the judge and the classifier
    (`eval_report.learner_agreement`). The order is hidden until every prompt is picked.

    With `save_to` (a JSON file) every pick is written as it is made, and a new widget over the
    same replies starts with them: running the cell again, or Run all, keeps your judging. A
    pick is kept only while both replies of its prompt are the ones you picked between."""

    CHOICES = (("A is more in character", "A"), ("B is more in character", "B"), ("Tie", "tie"))

    def __init__(self, rows: list[dict], seed: int = 0, save_to: str | os.PathLike | None = None):
        import random

        import ipywidgets as w

        rng = random.Random(seed)
        self.rows = rows
        self.tuned_is_a = {row["id"]: rng.random() < 0.5 for row in rows}
        self.save_to = Path(save_to) if save_to else None
        self.picks: dict[str, str] = self._saved_picks()
        self.index = next((i for i, row in enumerate(rows) if row["id"] not in self.picks), len(rows))
        self.prompt, self.reply_a, self.reply_b, self.progress = w.HTML(), w.HTML(), w.HTML(), w.HTML()
        self.buttons = []
        for label, choice in self.CHOICES:
            button = w.Button(description=label, layout=w.Layout(width="220px"))
            button.on_click(lambda _, choice=choice: self.pick(choice))
            self.buttons.append(button)
        self.widget = w.VBox([self.progress, self.prompt, self.reply_a, self.reply_b, w.HBox(self.buttons)])
        self._show()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def pick(self, choice: str) -> None:
        """Record "A", "B" or "tie" for the prompt on show, then show the next one."""
        if self.index >= len(self.rows):
            return
        row = self.rows[self.index]
        tuned_is_a = self.tuned_is_a[row["id"]]
        self.picks[row["id"]] = ("tie" if choice == "tie" else
                                 "tuned" if (choice == "A") == tuned_is_a else "base_prompted")
        if self.save_to is not None:
            from persona_lib.io import write_json

            write_json(self.save_to, {"picks": {i: {"pick": p, "replies": self._replies_key(i)}
                                                for i, p in self.picks.items()}})
        self.index = next((i for i, r in enumerate(self.rows) if r["id"] not in self.picks), len(self.rows))
        self._show()

    def _replies_key(self, prompt_id: str) -> str:
        from persona_lib.io import canonical_sha256

        row = next(r for r in self.rows if r["id"] == prompt_id)
        return canonical_sha256([row["prompt"], row["tuned"]["reply"], row["base_prompted"]["reply"]])

    def _saved_picks(self) -> dict[str, str]:
        if self.save_to is None or not self.save_to.is_file():
            return {}
        from persona_lib.io import read_json

        try:
            saved = read_json(self.save_to).get("picks", {})
        except (OSError, ValueError, AttributeError):
            print(f"{self.save_to} could not be read: starting with no picks (it is replaced at the first pick)")
            return {}
        ids = {row["id"] for row in self.rows}
        return {i: s["pick"] for i, s in saved.items() if i in ids and s.get("replies") == self._replies_key(i)}

    def _show(self) -> None:
        n = len(self.rows)
        if self.index >= n:
            for button in self.buttons:
                button.disabled = True
            picked = sum(p == "tuned" for p in self.picks.values())
            self.progress.value = f"<b>Done: you picked the tuned reply {picked} times of {n}.</b> Run the next cell."
            self.prompt.value = self.reply_a.value = self.reply_b.value = ""
            return
        row = self.rows[self.index]
        a, b = ("tuned", "base_prompted") if self.tuned_is_a[row["id"]] else ("base_prompted", "tuned")
        self.progress.value = f"<b>Prompt {self.index + 1} of {n}</b>"
        self.prompt.value = f"<p><b>User:</b> {html.escape(row['prompt'])}</p>"
        self.reply_a.value = f"<p><b>A:</b> {html.escape(row[a]['reply'])}</p>"
        self.reply_b.value = f"<p><b>B:</b> {html.escape(row[b]['reply'])}</p>"

    def results(self) -> dict:
        from persona_lib.eval_report import learner_agreement

        return learner_agreement(self.picks, self.rows)
