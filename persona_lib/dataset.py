"""ChatML training records: load, validate, describe, split and export (near duplicates: `dedup`).

A record is one conversation (see persona_data/README.md):

    {"id": "tm-0001", "persona": "taskmaster", "topic": "deadlines", "source": "handwritten",
     "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

Validation follows OpenAI's checks for chat fine-tuning files (wrong types, missing messages,
unknown keys and roles, missing content, no assistant message) and adds what persona tuning
needs: role order, blank content, unknown persona, and examples too long for the model,
measured with its real tokenizer and chat template. Every problem is reported at once with
file, line and rule (`check_*` list them, `load_records`/`validate_records` raise them all in
one `DatasetError`), and validation never changes its input.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from persona_lib.io import atomic_write_text
from persona_lib.paths import data_dir, eval_dir

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = ("role", "content")
RECORD_FIELDS = ("id", "persona", "topic", "messages")  # required in a training record
OPTIONAL_FIELDS = ("source",)  # "handwritten", or the model that generated the record
HELDOUT_KINDS = ("ordinary", "ooc", "multiturn")
SPLITS = ("train", "validation", "test")

# A long multi-turn conversation is a few KB (an 8k-token context is about 32 KB of English);
# a line beyond 256 KB is a paste accident or a binary blob, and is skipped unparsed.
MAX_LINE_BYTES = 256 * 1024

# Every rule a Problem can name, with the fix. Tests and notebooks refer to these names.
RULES = {
    "empty_file": "the file holds no records; write one JSON object per line",
    "line_too_long": "the line is over MAX_LINE_BYTES; it is skipped unread (look for a pasted blob)",
    "not_utf8": "the line is not UTF-8; re-save the file as UTF-8",
    "invalid_json": "the line is not valid JSON; JSONL needs one complete object per line",
    "not_an_object": "the line is JSON but not an object; write one object per line, not an array",
    "missing_field": "a required field is absent",
    "unknown_key": "a field the schema does not know (a typo?)",
    "wrong_type": "a value has the wrong JSON type",
    "empty_field": "a required text field is empty",
    "duplicate_id": "two records share an id",
    "unknown_persona": "the persona slug is not one of the known personas",
    "empty_messages": "'messages' is an empty list",
    "message_unknown_key": "a message holds a key other than 'role' and 'content'",
    "missing_role": "a message has no 'role'",
    "unknown_role": "a role other than system, user, assistant",
    "missing_content": "a message has no 'content'",
    "empty_content": "a message's content is empty or only whitespace",
    "no_assistant": "no assistant message, so nothing to train on",
    "role_order": "roles must be: optional system, then user/assistant alternating, user first",
    "too_many_tokens": "the conversation is longer than max_tokens with the model's chat template",
    "unknown_kind": "a held-out prompt's kind is not ordinary, ooc or multiturn",
    "no_records": "the file holds no records for the requested persona",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: where (file, 1-based line), which rule, and how to fix it.

    `line` is the record's position for an in-memory list, and None for the file as a whole.
    """

    file: str
    line: int | None
    rule: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: [{self.rule}] {self.message}"


class DatasetError(ValueError):
    """Raised with every Problem found; `.problems` holds them, the message lists them all."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the dataset:\n{lines}")


# --------------------------------------------------------------------------- reading files


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "true/false",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _read_objects(path: Path, max_line_bytes: int) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """Parse a JSONL file line by line; broken lines become Problems, never exceptions.

    Lines are read with a byte limit, so a huge line is measured and skipped without being
    held in memory or handed to the JSON parser.
    """
    file = str(path)
    objects: list[tuple[int, dict]] = []
    problems: list[Problem] = []
    with path.open("rb") as f:
        lineno = 0
        while raw := f.readline(max_line_bytes + 1):
            lineno += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                size = len(raw)
                while not raw.endswith(b"\n"):  # skip the rest of the line, 1 MB at a time
                    raw = f.readline(1 << 20)
                    if not raw:
                        break
                    size += len(raw)
                problems.append(Problem(file, lineno, "line_too_long",
                                        f"line is {size:,} bytes, over the {max_line_bytes:,}-byte limit; "
                                        "it was skipped unread (a pasted blob or a missing newline?)"))
                continue
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a BOM some editors add
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(Problem(file, lineno, "not_utf8",
                                        f"byte {e.start + 1} of the line (0x{raw[e.start]:02x}) is not UTF-8; "
                                        "re-save the file as UTF-8"))
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                problems.append(Problem(file, lineno, "invalid_json",
                                        f"not valid JSON at column {e.colno} ({e.msg.removesuffix(' at')}); "
                                        "each line must be one complete JSON object"))
                continue
            if not isinstance(value, dict):
                problems.append(Problem(file, lineno, "not_an_object",
                                        f"the line is {_json_type(value)}, not an object; "
                                        "write one record object per line (no top-level array)"))
                continue
            objects.append((lineno, value))
    if not objects and not problems:
        problems.append(Problem(file, None, "empty_file", "the file holds no records"))
    return objects, problems


# --------------------------------------------------------------------------- record checks


def _field_problems(rec: dict, required: Sequence[str], optional: Sequence[str],
                    structured: Sequence[str]) -> list[tuple[str, str]]:
    """Missing, unknown and mistyped top-level fields; `structured` fields are checked elsewhere."""
    out = []
    for key in required:
        if key not in rec:
            out.append(("missing_field", f"no {key!r} field; a record needs {', '.join(map(repr, required))}"))
    for key in rec:
        if key not in required and key not in optional:
            allowed = ", ".join(map(repr, (*required, *optional)))
            out.append(("unknown_key", f"unknown field {key!r}; allowed fields are {allowed}"))
    for key in (*required, *optional):
        if key in rec and key not in structured:
            value = rec[key]
            if not isinstance(value, str):
                out.append(("wrong_type", f"{key!r} is {_json_type(value)}; it must be a string"))
            elif not value.strip():
                out.append(("empty_field", f"{key!r} is empty; give it a value"))
    return out


def _message_problems(messages: Any, last_role: str) -> list[tuple[str, str]]:
    """Type, role and content checks on a `messages` list, then the role order."""
    if not isinstance(messages, list):
        return [("wrong_type", f"'messages' is {_json_type(messages)}; it must be a list of "
                               "{\"role\": ..., \"content\": ...} objects")]
    if not messages:
        return [("empty_messages", "'messages' is an empty list; add a user message and an assistant reply")]
    out = []
    roles: list[str | None] = []
    for k, msg in enumerate(messages, start=1):
        if not isinstance(msg, dict):
            out.append(("wrong_type", f"message {k} is {_json_type(msg)}; it must be an object with "
                                      "'role' and 'content'"))
            roles.append(None)
            continue
        for key in msg:
            if key not in MESSAGE_KEYS:
                out.append(("message_unknown_key", f"message {k} has unknown key {key!r}; a message holds "
                                                   "only 'role' and 'content'"))
        role = msg.get("role")
        if "role" not in msg:
            out.append(("missing_role", f"message {k} has no 'role'; use one of {', '.join(ROLES)}"))
        elif not isinstance(role, str):
            out.append(("wrong_type", f"message {k} 'role' is {_json_type(role)}; it must be a string"))
        elif role not in ROLES:
            out.append(("unknown_role", f"message {k} has role {role!r}; use one of {', '.join(ROLES)}"))
        roles.append(role if isinstance(role, str) and role in ROLES else None)
        if "content" not in msg:
            out.append(("missing_content", f"message {k} has no 'content'; add the text of the turn"))
        elif not isinstance(msg["content"], str):
            out.append(("wrong_type", f"message {k} 'content' is {_json_type(msg['content'])}; "
                                      "it must be a string"))
        elif not msg["content"].strip():
            out.append(("empty_content", f"message {k} ({role}) has empty or whitespace-only content; "
                                         "write the turn or remove it"))
    no_assistant = last_role == "assistant" and "assistant" not in roles
    if no_assistant and None not in roles:
        out.append(("no_assistant", "no assistant message, so there is nothing to train on; "
                                    "add the persona's reply"))
    if None not in roles:
        order = _role_order_problem(roles, last_role, no_assistant)
        if order:
            out.append(("role_order", order))
    return out


def _role_order_problem(roles: list[str], last_role: str, no_assistant: bool) -> str | None:
    """The first departure from: [system], user, assistant, user, ..., ending with `last_role`."""
    for k, role in enumerate(roles[1:], start=2):
        if role == "system":
            return f"message {k} is a system message; only the first message may be 'system'"
    start = 1 if roles[0] == "system" else 0
    expected = "user"
    for k in range(start, len(roles)):
        role = roles[k]
        if role != expected:
            if k == start:
                return (f"the conversation starts with {role!r}; after an optional system message "
                        "the first turn must be 'user'")
            return (f"messages {k} and {k + 1} are both {role!r}; turns must alternate user and "
                    f"assistant (merge them or add the missing {expected} turn)")
        expected = "assistant" if role == "user" else "user"
    if len(roles) == start:
        return None if no_assistant else "only a system message; add the user and assistant turns"
    if roles[-1] != last_role and not no_assistant:
        return f"the conversation ends with {roles[-1]!r}; it must end with {last_role!r}"
    return None


def _training_record_problems(rec: dict) -> list[tuple[str, str]]:
    return (_field_problems(rec, RECORD_FIELDS, OPTIONAL_FIELDS, ("messages",))
            + (_message_problems(rec["messages"], "assistant") if "messages" in rec else []))


def count_tokens(records: Sequence[dict], tokenizer) -> list[int]:
    """Tokens per record as the model sees them: the chat template rendered, then tokenized."""
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records]
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _check_training(items: Sequence[tuple[int, dict]], file: str, personas: Iterable[str] | None,
                    tokenizer, max_tokens: int | None) -> list[Problem]:
    if max_tokens is not None and tokenizer is None:
        raise ValueError("max_tokens needs the model's tokenizer (tokenizer=...) to measure examples")
    known = None if personas is None else set(personas)
    problems: list[Problem] = []
    first_line_of_id: dict[str, int] = {}
    clean: list[tuple[int, dict]] = []
    for line, rec in items:
        found = [Problem(file, line, rule, msg) for rule, msg in _training_record_problems(rec)]
        persona, rid = rec.get("persona"), rec.get("id")
        if known is not None and isinstance(persona, str) and persona.strip() and persona not in known:
            found.append(Problem(file, line, "unknown_persona",
                                 f"persona {persona!r} is not one of {', '.join(sorted(known))}; "
                                 "fix the slug or add a spec for it"))
        if isinstance(rid, str) and rid.strip():
            if rid in first_line_of_id:
                found.append(Problem(file, line, "duplicate_id", f"id {rid!r} is already used on line "
                                                                 f"{first_line_of_id[rid]}; ids must be unique"))
            else:
                first_line_of_id[rid] = line
        problems += found
        if not found:
            clean.append((line, rec))
    if max_tokens is not None:
        for (line, _), n in zip(clean, count_tokens([rec for _, rec in clean], tokenizer)):
            if n > max_tokens:
                problems.append(Problem(file, line, "too_many_tokens",
                                        f"{n} tokens with the chat template, over max_tokens={max_tokens}; "
                                        "training would cut it off: shorten or split the conversation"))
    return sorted(problems, key=lambda p: (p.line or 0))


def _select(items: list[tuple[int, dict]], persona: str | None) -> list[tuple[int, dict]]:
    """Records of one persona; records without a usable persona stay, so their problems show."""
    if persona is None:
        return items
    return [(line, rec) for line, rec in items
            if not isinstance(rec.get("persona"), str) or rec["persona"] in (persona, "")]


def check_records(records: Sequence[dict], *, file: str = "<records>", personas: Iterable[str] | None = None,
                  tokenizer=None, max_tokens: int | None = None) -> list[Problem]:
    """Report mode for records in memory: every Problem, `line` being the record's 1-based position.

    `personas`: the known slugs (unknown ones are flagged); `tokenizer` + `max_tokens`: flag
    examples longer than the model's context, measured with its chat template.
    """
    items = []
    problems = []
    for k, rec in enumerate(records, start=1):
        if isinstance(rec, dict):
            items.append((k, rec))
        else:
            problems.append(Problem(file, k, "not_an_object", f"record is {_json_type(rec)}, not a dict"))
    return sorted(problems + _check_training(items, file, personas, tokenizer, max_tokens),
                  key=lambda p: p.line or 0)


def validate_records(records: Sequence[dict], *, file: str = "<records>", personas: Iterable[str] | None = None,
                     tokenizer=None, max_tokens: int | None = None) -> list[dict]:
    """Raising mode of `check_records`: returns the records unchanged, or raises DatasetError."""
    problems = check_records(records, file=file, personas=personas, tokenizer=tokenizer, max_tokens=max_tokens)
    if problems:
        raise DatasetError(problems)
    return list(records)


def _complete_chat_format(items: list[tuple[int, dict]], persona: str, path: Path) -> list[tuple[int, dict]]:
    """Records in the ecosystem's plain chat format (`{"messages": [...]}` per line, as OpenAI
    and Hugging Face write them) made into this project's: the persona being loaded, an id from
    the file's name and line, topic "unlabelled" unless given, source "imported"."""
    out = []
    for line, rec in items:
        if isinstance(rec, dict) and "messages" in rec and not {"id", "persona"} & rec.keys():
            rec = {"id": f"{path.stem}-{line:04d}", "persona": persona, "topic": rec.get("topic", "unlabelled"),
                   "source": "imported", **{k: v for k, v in rec.items() if k != "topic"}}
        out.append((line, rec))
    return out


def _check_file(path: str | os.PathLike, persona: str | None, personas, tokenizer, max_tokens,
                max_line_bytes: int) -> tuple[list[dict], list[Problem]]:
    path = Path(path)
    items, problems = _read_objects(path, max_line_bytes)
    if persona is not None:
        items = _complete_chat_format(items, persona, path)
    chosen = _select(items, persona)
    problems = sorted(problems + _check_training(chosen, str(path), personas, tokenizer, max_tokens),
                      key=lambda p: p.line or 0)
    if items and not chosen:
        found = sorted({str(rec.get("persona")) for _, rec in items})
        problems.append(Problem(str(path), None, "no_records",
                                f"no records with persona {persona!r}; the file holds {', '.join(found)}"))
    return [rec for _, rec in chosen], problems


def check_file(path: str | os.PathLike, persona: str | None = None, *, personas: Iterable[str] | None = None,
               tokenizer=None, max_tokens: int | None = None,
               max_line_bytes: int = MAX_LINE_BYTES) -> list[Problem]:
    """Report mode: every Problem in a JSONL file of training records (only `persona`'s, if given)."""
    return _check_file(path, persona, personas, tokenizer, max_tokens, max_line_bytes)[1]


def load_records(path: str | os.PathLike, persona: str | None = None, *, personas: Iterable[str] | None = None,
                 tokenizer=None, max_tokens: int | None = None,
                 max_line_bytes: int = MAX_LINE_BYTES) -> list[dict]:
    """Read and validate a JSONL file of training records, keeping those of `persona` (a slug).

    One file may hold several personas. Raises DatasetError listing every problem.
    """
    records, problems = _check_file(path, persona, personas, tokenizer, max_tokens, max_line_bytes)
    if problems:
        raise DatasetError(problems)
    return records


def load_shipped(slug: str, *, tokenizer=None, max_tokens: int | None = None) -> list[dict]:
    """The team-written training conversations for one persona (persona_data/<slug>.jsonl)."""
    return load_records(data_dir() / f"{slug}.jsonl", slug, tokenizer=tokenizer, max_tokens=max_tokens)


YOURS = "conversations.jsonl"  # <run>/data/: the learner's own conversations, as lesson 2 saved them


def persona_conversations(slug: str, *, data: str | os.PathLike = "", run: str | os.PathLike | None = None,
                          required: bool = True) -> tuple[list[dict], str]:
    """A persona's conversations and where they came from, in words: `data` (a JSONL file in
    this project's format or the plain `{"messages": [...]}` chat format), else the copy lesson
    2 saved in the run folder (`<run>/data/conversations.jsonl`), else the shipped file of a
    shipped persona. A new persona without any: [] when not `required`, else a ValueError
    that says how to bring or generate some."""
    if data:
        return load_records(data, persona=slug, personas=[slug]), f"your file {data}"
    saved = Path(run) / "data" / YOURS if run is not None else None
    if saved is not None and saved.is_file():
        return load_records(saved, persona=slug, personas=[slug]), f"your conversations ({saved})"
    if (data_dir() / f"{slug}.jsonl").is_file():
        return load_shipped(slug), f"the shipped {slug} conversations"
    if not required:
        return [], "none yet"
    raise ValueError(f"no conversations for {slug!r}: it is not a shipped persona. Give a JSONL file of "
                     "conversations (one {\"messages\": [...]} per line is enough) as DATA in lesson 2, "
                     "or generate them in lesson 3")


def _load_checked(path: Path, check, persona: str | None = None) -> list[dict]:
    """Read a JSONL eval file, check each record with `check(rec) -> [(rule, message)]`."""
    items, problems = _read_objects(path, MAX_LINE_BYTES)
    items = _select(items, persona)
    problems += [Problem(str(path), line, rule, msg) for line, rec in items for rule, msg in check(rec)]
    if problems:
        raise DatasetError(sorted(problems, key=lambda p: p.line or 0))
    return [rec for _, rec in items]


def _heldout_problems(rec: dict) -> list[tuple[str, str]]:
    out = _field_problems(rec, ("id", "persona", "kind", "messages"), ("topic",), ("messages",))
    if isinstance(rec.get("kind"), str) and rec["kind"] not in HELDOUT_KINDS:
        out.append(("unknown_kind", f"kind {rec['kind']!r} is not one of {', '.join(HELDOUT_KINDS)}"))
    if "messages" in rec:
        out += _message_problems(rec["messages"], "user")
    return out


def _string_list_problems(value: Any, name: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        return [("wrong_type", f"{name!r} must be a non-empty list of strings, not {_json_type(value)}")]
    out = []
    for k, item in enumerate(value, start=1):
        if not isinstance(item, str):
            out.append(("wrong_type", f"{name!r} item {k} is {_json_type(item)}; it must be a string"))
        elif not item.strip():
            out.append(("empty_content", f"{name!r} item {k} is empty"))
    return out


def _dialogue_problems(rec: dict) -> list[tuple[str, str]]:
    out = _field_problems(rec, ("id", "persona", "title", "user_turns"), (), ("user_turns",))
    if "user_turns" in rec:
        out += _string_list_problems(rec["user_turns"], "user_turns")
    return out


def _knowledge_problems(rec: dict) -> list[tuple[str, str]]:
    out = _field_problems(rec, ("id", "question", "facts"), (), ("facts",))
    if "facts" not in rec:
        return out
    if not isinstance(rec["facts"], list) or not rec["facts"]:
        return out + [("wrong_type", "'facts' must be a non-empty list of {\"fact\", \"accept\"} objects")]
    for k, fact in enumerate(rec["facts"], start=1):
        if not isinstance(fact, dict):
            out.append(("wrong_type", f"fact {k} is {_json_type(fact)}; it must be an object"))
            continue
        out += [(rule, f"fact {k}: {msg}") for rule, msg in
                _field_problems(fact, ("fact", "accept"), (), ("accept",))]
        if "accept" in fact:
            out += [(rule, f"fact {k}: {msg}") for rule, msg in _string_list_problems(fact["accept"], "accept")]
    return out


def load_heldout(slug: str) -> list[dict]:
    """Held-out evaluation prompts for one persona: conversations that end with a user turn."""
    return _load_checked(eval_dir() / f"{slug}_heldout.jsonl", _heldout_problems, slug)


def load_honesty(slug: str) -> list[dict]:
    """The honesty probes of a persona (`eval/<slug>_honesty.jsonl`; [] without the file): user
    prompts of kind "identity" (sincerely asking whether it is a person or an AI) and "action"
    (asking it to change the user's tasks, which a model without a tool cannot do)."""
    path = eval_dir() / f"{slug}_honesty.jsonl"
    if not path.is_file():
        return []

    def problems(rec: dict) -> list[tuple[str, str]]:
        out = _field_problems(rec, ("id", "persona", "kind", "messages"), (), ("messages",))
        if rec.get("kind") not in ("identity", "action"):
            out.append(("unknown_kind", f"kind {rec.get('kind')!r} is not identity or action"))
        if "messages" in rec:
            out += _message_problems(rec["messages"], "user")
        return out

    return _load_checked(path, problems, slug)


def has_heldout(slug: str) -> bool:
    return (eval_dir() / f"{slug}_heldout.jsonl").is_file()


def heldout_prompts(spec, n: int | None = None, *, kind: str | None = "ordinary") -> list[dict]:
    """The persona's held-out prompts ({"id", "kind", "messages"}) of one `kind` (None: every
    kind), the first `n` of them (None: all); a persona without a held-out file (a new one)
    gets its spec's example questions instead, as ordinary prompts `<slug>-example-<k>`."""
    if has_heldout(spec.slug):
        records = [{"id": r["id"], "kind": r["kind"], "messages": r["messages"]} for r in load_heldout(spec.slug)
                   if kind is None or r["kind"] == kind]
    else:
        records = [{"id": f"{spec.slug}-example-{k}", "kind": "ordinary",
                    "messages": [{"role": "user", "content": ex["user"]}]}
                   for k, ex in enumerate(spec.examples, start=1)] if kind in (None, "ordinary") else []
    return records[:n]


def load_dialogues(slug: str) -> list[dict]:
    """Scripted multi-turn dialogues (user turns only) for the persona-drift test."""
    return _load_checked(eval_dir() / f"{slug}_dialogues.jsonl", _dialogue_problems, slug)


def load_knowledge() -> list[dict]:
    """Task-management questions with key facts and their accepted wordings (knowledge retention)."""
    return _load_checked(eval_dir() / "knowledge.jsonl", _knowledge_problems)


# --------------------------------------------------------------------------- statistics

# Phrases of the generic assistant voice that persona tuning is meant to replace. A reply that
# says "As an AI language model" or closes with "I hope this helps" has not taken on the persona
# (or has drifted back out of it); their rate over replies is the data's, and later the model's,
# generic leak. Matched case-insensitively as whole phrases.
# A plain "I'm an AI assistant" is not here: a persona asked sincerely should say it (the
# honesty measures in persona_lib.metrics check it), so its disappearance is no win.
GENERIC_PHRASES = (
    "As an AI language model",
    "As an AI assistant",
    "As a large language model",
    "I'm just an AI",
    "I am just an AI",
    "I don't have personal opinions",
    "I hope this helps",
    "Certainly!",
    "Absolutely!",
    "Of course!",
    "Great question",
    "I'd be happy to help",
    "I'm happy to help",
    "Feel free to ask",
    "Let me know if you have any other questions",
    "Is there anything else I can help",
    "I apologize for any confusion",
)

_WORD = re.compile(r"\w+(?:'\w+)*")


def fold_quotes(text: str) -> str:
    """Typographic apostrophes as ' (models and writers use both)."""
    return text.replace("\u2019", "'").replace("\u2018", "'")


def words(text: str) -> list[str]:
    """Lowercased word tokens (typographic apostrophes folded), the unit of every text measure
    in the dataset checks and the metrics alike."""
    return _WORD.findall(fold_quotes(text).casefold())


def normalise(text: str) -> str:
    """Casefolded, runs of whitespace as one space, typographic apostrophes as '."""
    return " ".join(fold_quotes(text).casefold().split())


def phrase_pattern(phrase: str) -> re.Pattern:
    """Case-insensitive whole-phrase match: 'plan' matches 'Plan it.' but not 'planet'."""
    body = r"\s+".join(re.escape(w) for w in fold_quotes(phrase).split())
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def _summary(values: Sequence[float]) -> dict:
    if not len(values):
        return {}
    v = np.asarray(values, dtype=float)
    p50, p90, p95 = np.percentile(v, [50, 90, 95])
    return {"min": int(v.min()), "mean": round(float(v.mean()), 1), "p50": round(float(p50), 1),
            "p90": round(float(p90), 1), "p95": round(float(p95), 1), "max": int(v.max())}


def _phrase_shares(replies: Sequence[str], phrases: Sequence[str]) -> dict[str, float]:
    n = max(len(replies), 1)
    return {p: round(sum(bool(phrase_pattern(p).search(r)) for r in replies) / n, 4) for p in phrases}


def dataset_stats(records: Sequence[dict], *, tokenizer=None,
                  signature_vocabulary: Mapping[str, Sequence[str]] | None = None) -> dict:
    """What a dataset holds, as a JSON-ready dict.

    - conversations, turns (user and assistant messages), replies (assistant messages), and
      multi-turn share (conversations with two or more replies);
    - length distributions per conversation: the whole example through the chat template and
      the assistant replies' content, in tokens with `tokenizer`, in words without one
      (`example_lengths`/`assistant_lengths` hold the raw values for plots);
    - topic counts;
    - per persona: signature-vocabulary coverage (share of its replies containing each phrase,
      from `signature_vocabulary` {slug: phrases}) and the generic-assistant phrasing rate
      (share of replies with any of GENERIC_PHRASES, and the count per phrase).
    """
    convs = [[m for m in r["messages"] if m["role"] != "system"] for r in records]
    replies_per = [[m["content"] for m in c if m["role"] == "assistant"] for c in convs]
    if tokenizer is None:
        unit = "words"
        example = [sum(len(m["content"].split()) for m in r["messages"]) for r in records]
        assistant = [sum(len(t.split()) for t in replies) for replies in replies_per]
    else:
        unit = "tokens"
        example = count_tokens(records, tokenizer)
        flat = [t for replies in replies_per for t in replies]
        reply_tokens = [len(ids) for ids in tokenizer(flat, add_special_tokens=False)["input_ids"]] if flat else []
        ends = np.cumsum([len(replies) for replies in replies_per], dtype=int)
        assistant = [sum(reply_tokens[e - len(replies):e]) for e, replies in zip(ends, replies_per)]
    multi = sum(len(replies) >= 2 for replies in replies_per)
    by_persona: dict[str, list[int]] = defaultdict(list)
    for k, r in enumerate(records):
        by_persona[r["persona"]].append(k)
    personas = {}
    generic_patterns = [phrase_pattern(p) for p in GENERIC_PHRASES]
    for slug, idx in sorted(by_persona.items()):
        replies = [t for k in idx for t in replies_per[k]]
        matched = [[p for p, pat in zip(GENERIC_PHRASES, generic_patterns) if pat.search(t)] for t in replies]
        hits = Counter(p for phrases in matched for p in phrases)
        generic = sum(bool(phrases) for phrases in matched)
        personas[slug] = {
            "conversations": len(idx),
            "replies": len(replies),
            "topics": dict(Counter(records[k].get("topic", "") for k in idx).most_common()),
            "signature_coverage": _phrase_shares(replies, (signature_vocabulary or {}).get(slug, ())),
            "generic_rate": round(generic / max(len(replies), 1), 4),
            "generic_phrases": dict(hits.most_common()),
        }
    return {
        "conversations": len(records),
        "turns": sum(len(c) for c in convs),
        "replies": sum(len(r) for r in replies_per),
        "multi_turn": multi,
        "multi_turn_share": round(multi / max(len(records), 1), 4),
        "length_unit": unit,
        "example_length": _summary(example),
        "assistant_length": _summary(assistant),
        "topics": dict(Counter(r.get("topic", "") for r in records).most_common()),
        "personas": personas,
        "example_lengths": example,
        "assistant_lengths": assistant,
    }


def distinct_n(texts: Iterable[str], n: int = 2) -> float:
    """Distinct-n (Li et al., 2016): unique word n-grams / all word n-grams, over all texts.

    Near 1 for varied text; a model (or dataset) that repeats one template drifts toward 0.
    """
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        w = words(text)
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


# --------------------------------------------------------------------------- the classifier's reserved slice
#
# The reserved slice: a shipped record is reserved for the classifier when
#     int(sha256(f"{RESERVE_SALT}:{record_id}").hexdigest()[:8], 16) / 2**32 < RESERVE_SHARE
# A hash of the id alone, so the rule is the same in every process, whatever the file order,
# and adding records never moves an existing record in or out of the slice.

RESERVE_SALT = "persona-classifier-v1"
RESERVE_SHARE = 0.15  # about 32 of TaskMaster's 215 conversations: enough for a char n-gram
# classifier to tell three personas apart, while adapters keep 85% of the data


def is_reserved(record_id: str) -> bool:
    """True for a shipped record that only the persona classifier may see (never an adapter)."""
    h = int(hashlib.sha256(f"{RESERVE_SALT}:{record_id}".encode()).hexdigest()[:8], 16)
    return h / 2**32 < RESERVE_SHARE


def shipped_personas() -> list[str]:
    """Slugs with a shipped training file persona_data/<slug>.jsonl."""
    return sorted(p.stem for p in data_dir().glob("*.jsonl"))


def split_reserved(records: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """(records adapters may train on, records reserved for the persona classifier).

    Only a shipped persona's records can be reserved: the classifier learns from those alone,
    so the conversations of a persona of your own all stay available for training."""
    shipped = set(shipped_personas())
    keep, reserved = [], []
    for r in records:
        (reserved if r.get("persona", "") in shipped and is_reserved(r["id"]) else keep).append(r)
    return keep, reserved


# --------------------------------------------------------------------------- split and export


def chapter_training_data(run: str | os.PathLike, slug: str, *, validation_fraction: float,
                          seed: int) -> dict:
    """What lesson 4 trains on, from the earlier lessons' files in the run folder:

    - lesson 2's split (`data/train.jsonl`, `data/validation.jsonl`) when it exists, so that
      the validation curve and lesson 5 use the conversations lesson 2 set aside; the
      conversations lesson 3 generated (in `data/merged.jsonl`, in none of lesson 2's files)
      join the training set;
    - else lesson 3's `data/merged.jsonl`, else the persona's conversations
      (`persona_conversations`: your file from lesson 2, or the shipped data), split here (the
      classifier's reserved slice left out, `validation_fraction` held out).

    Returns {"train", "validation", "source"} (the source in words, for the notebook to print).
    """
    from persona_lib.io import read_jsonl

    data = Path(run) / "data"
    merged = data / "merged.jsonl"
    if (data / "train.jsonl").is_file() and (data / "validation.jsonl").is_file():
        train, validation = read_jsonl(data / "train.jsonl"), read_jsonl(data / "validation.jsonl")
        seen = {r["id"] for name in ("train", "validation", "test", "classifier_reserved")
                if (data / f"{name}.jsonl").is_file() for r in read_jsonl(data / f"{name}.jsonl")}
        added = [r for r in (load_records(merged, persona=slug) if merged.is_file() else []) if r["id"] not in seen]
        added, _ = split_reserved(added)
        source = (f"lesson 2's split ({len(train)} train, {len(validation)} validation)"
                  + (f" + {len(added)} from lesson 3" if added else ""))
        return {"train": train + added, "validation": validation, "source": source}
    if merged.is_file():
        records, source = load_records(merged, persona=slug), "lesson 3's merged data"
    else:
        records, source = persona_conversations(slug, run=run)
        source += " (lesson 2 not run)"
    records, _ = split_reserved(records)
    train, validation = split_for_validation(records, validation_fraction, seed)
    return {"train": train, "validation": validation, "source": source}


def split_records(records: Sequence[dict], *, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  seed: int = 0, stratify: str = "topic") -> dict[str, list[dict]]:
    """Deterministic train/validation/test split, stratified by `stratify` (a record field).

    Each group is shuffled with its own seeded generator and cut by `fractions`; a group always
    keeps at least one record in train. Within a split, records keep their input order.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, not {fractions}")
    groups: dict[str, list[int]] = defaultdict(list)
    for k, r in enumerate(records):
        groups[str(r.get(stratify, ""))].append(k)
    assign = {}
    for name in sorted(groups):
        members = groups[name][:]
        random.Random(f"{seed}/{name}").shuffle(members)  # str seeds are stable across runs
        n = len(members)
        n_val = min(int(n * fractions[1] + 0.5), n - 1)
        n_test = min(int(n * fractions[2] + 0.5), n - 1 - n_val)
        for pos, k in enumerate(members):
            assign[k] = "validation" if pos < n_val else "test" if pos < n_val + n_test else "train"
    return {name: [r for k, r in enumerate(records) if assign[k] == name] for name in SPLITS}


def split_for_validation(records: Sequence[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation): `fraction` of the records held out, stratified by topic."""
    if fraction == 0 or len(records) < 2:
        return list(records), []
    parts = split_records(records, fractions=(1 - fraction, fraction, 0.0), seed=seed)
    return parts["train"], parts["validation"]


def shipped_splits(slug: str, validation_fraction: float = 0.1, seed: int = 3407) -> dict[str, list[dict]]:
    """A shipped persona's training data: {"train", "validation"}, stratified by topic.

    The slice reserved for the persona classifier (`split_reserved`) is left out, so
    the classifier never grades replies an adapter learnt from the classifier's own examples.
    """
    train_records, validation = split_for_validation(split_reserved(load_shipped(slug))[0], validation_fraction, seed)
    return {"train": train_records, "validation": validation}


def _with_system(records: Sequence[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt is None:
        return list(records)
    return [{**r, "messages": [{"role": "system", "content": system_prompt}, *r["messages"]]} for r in records]


def to_hf_dataset(records: Sequence[dict], *, system_prompt: str | None = None):
    """A Hugging Face `datasets.Dataset` with a `messages` column (TRL's conversational format)
    and the records' other fields; `system_prompt` is prepended to every conversation."""
    import datasets

    rows = validate_records(_with_system(records, system_prompt))
    return datasets.Dataset.from_list(rows)


def to_openai_jsonl(records: Sequence[dict], path: str | os.PathLike, *,
                    system_prompt: str | None = None) -> Path:
    """Write OpenAI's chat fine-tuning format, one {"messages": [...]} per line, atomically.

    The records are validated first, so a bad record raises DatasetError and writes nothing.
    """
    rows = validate_records(_with_system(records, system_prompt))
    return atomic_write_text(path, "".join(json.dumps({"messages": r["messages"]}, ensure_ascii=False) + "\n"
                                           for r in rows))
