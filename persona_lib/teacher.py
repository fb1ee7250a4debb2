"""What data generation asks the teacher model for, and how its answer is read: the plan of
items (topic x who is asking x situation, so no two requests are alike), the system and user
messages for one item, the JSON schema of a conversation, and parsing a reply into a record
(with the re-ask message when a reply breaks the rules). Lesson 3 prints each of them;
`persona_lib.generate.run` sends them."""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from typing import Sequence

from persona_lib.io import canonical_sha256
from persona_lib.spec import PersonaSpec, as_sentence, rule_lines, spaced

# Who is asking (Persona Hub style): the same topic asked by a nurse manager and by a
# bakery owner comes out as two different conversations.
USER_PROFILES = (
    "a new nurse manager building next month's shift schedule",
    "a freelance translator juggling three clients",
    "a high-school English teacher with a stack of essays to grade",
    "a startup founder preparing an investor pitch",
    "a graduate student writing a thesis chapter",
    "a parent of two young kids who works part-time",
    "the owner of a small neighbourhood bakery",
    "a software engineer on an on-call rotation",
    "a project manager at a construction firm",
    "a retiree coordinating volunteers at a food bank",
    "a sales rep chasing a quarterly quota",
    "a college freshman in their first semester",
    "a wedding planner in peak season",
    "an operations lead at a warehouse",
    "a PhD student with a conference deadline",
    "a real-estate agent lining up showings",
    "a marketing coordinator launching a campaign",
    "a solo lawyer with several court dates",
    "a nonprofit director writing grant applications",
    "a physiotherapist running a private practice",
    "a remote customer-support agent",
    "a musician balancing gigs and a day job",
    "an HR generalist onboarding new hires",
    "a restaurant manager handling staff and suppliers",
    "a data analyst with recurring weekly reports",
    "a caregiver looking after an elderly parent",
    "a content creator who posts three times a week",
    "an accountant in the middle of tax season",
    "a junior designer going through feedback rounds",
    "a landlord with four rental units",
    "a research scientist running lab experiments",
    "a high-school student preparing for final exams",
)


# In what state, and how they write: style variety the voice must hold up against.
SITUATIONS = (
    "writes short lowercase messages in a hurry",
    "is stressed and a little overwhelmed",
    "is upbeat after finishing something big",
    "is frustrated after missing a deadline",
    "writes long messages full of context",
    "is sceptical that planning helps at all",
    "asks one precise, practical question",
    "makes typos and uses abbreviations",
    "is procrastinating and admits it",
    "is calm and methodical",
    "is coming back after a week away",
    "is polite and rather formal",
)


@dataclass(frozen=True)
class Item:
    """One planned example: what to ask the model for, and the id its record will carry."""

    index: int
    persona: str  # the spec's slug
    topic: str
    profile: str  # who the user is
    situation: str  # their state and writing style
    turns: int  # user messages, each answered by the persona
    phrases: tuple[str, ...]  # signature phrases suggested for this example
    id: str


def spec_digest(spec: PersonaSpec) -> str:
    """sha256 of the whole spec: the data writer's prompt reads nearly every field of it (traits,
    tone, rules, vocabulary, examples), so any edit asks for different conversations."""
    return canonical_sha256(asdict(spec))


def item_id(persona: str, topic: str, scenario: str, turns: int, index: int) -> str:
    """`<slug>-g<index>-<8 hex>`: readable, sortable, and a hash of everything the item asks for,
    so a changed plan (topics, seed, turn weights) never reuses an old id for a different
    request. A changed voice (traits, tone, rules) keeps the ids: `generate` records the spec
    beside its output and sets the earlier conversations aside instead."""
    digest = hashlib.sha256(f"{persona}\x00{topic}\x00{scenario}\x00{turns}\x00{index}".encode()).hexdigest()
    return f"{persona}-g{index:05d}-{digest[:8]}"


@functools.lru_cache(maxsize=256)
def _scenarios(seed: int, slug: str, topic: str) -> tuple[tuple[str, str], ...]:
    """Every (user profile, situation) pair in a seeded order of its own for each topic, so a
    topic never sees the same scenario twice before it has seen all 384."""
    pairs = [(p, s) for p in USER_PROFILES for s in SITUATIONS]
    random.Random(f"{seed}/{slug}/{topic}/scenarios").shuffle(pairs)
    return tuple(pairs)


def item_at(spec: PersonaSpec, index: int, seed: int = 0,
            turn_weights: Sequence[float] = (0.5, 0.3, 0.2)) -> Item:
    """Item `index` of the plan for (spec, seed): the same on every call and every machine.

    Topics go round-robin (every topic gets its share); each topic walks through its own
    shuffled list of scenarios, so no two of the first len(topics) x 384 items ask the same thing.
    """
    if not spec.topics:
        raise ValueError(f"spec {spec.slug!r} has no topics; add a `topics:` list to plan generation")
    rng = random.Random(f"{seed}/{spec.slug}/{index}")
    topic = spec.topics[index % len(spec.topics)]
    scenarios = _scenarios(seed, spec.slug, topic)
    profile, situation = scenarios[(index // len(spec.topics)) % len(scenarios)]
    turns = rng.choices(range(1, len(turn_weights) + 1), weights=turn_weights)[0]
    vocab = spec.signature_vocabulary
    phrases = tuple(vocab[(2 * index + k) % len(vocab)] for k in range(min(2, len(vocab))))
    scenario = f"{profile}; {situation}"
    return Item(index, spec.slug, topic, profile, situation, turns, phrases,
                item_id(spec.slug, topic, scenario, turns, index))


def plan(spec: PersonaSpec, n: int, seed: int = 0, turn_weights: Sequence[float] = (0.5, 0.3, 0.2)) -> list[Item]:
    """The first `n` items of the plan."""
    return [item_at(spec, i, seed, turn_weights) for i in range(n)]


def index_of(record_id: str) -> int | None:
    """The plan index inside a generated id, None for other ids."""
    m = re.fullmatch(r".+-g(\d{5,})-[0-9a-f]{8}", record_id)
    return int(m.group(1)) if m else None


def system_message(spec: PersonaSpec, item: Item) -> str:
    """Instructions for the data writer: the whole spec (traits with their descriptions, which
    the persona's own system prompt leaves out), one example of the voice, and the rules."""
    lines = [
        f"You write training conversations for fine-tuning a chat model to speak as {spec.name}. "
        f"Each conversation is one example: a user talks to {spec.name}, and every reply must be in voice.",
        "",
        f"{spec.name} is {as_sentence(spec.description)}",
        "Personality:",
        *[f"- {spaced(t.name)}: {as_sentence(t.description)}" for t in spec.traits],
        f"Tone: {as_sentence(spec.tone)}",
        f"Knows about: {as_sentence(spec.knowledge_domain)}",
    ]
    lines += rule_lines(spec, do="Always", dont="Never")
    if spec.examples:
        ex = spec.examples[item.index % len(spec.examples)]
        lines += ["", "An example of the voice (do not copy it):", f"User: {ex['user'].strip()}",
                  f"{spec.name}: {ex['assistant'].strip()}"]
    lines += [
        "",
        "Rules:",
        "- The user is a real person with their own details (names, dates, numbers); vary how they write.",
        # A persona is a voice, not a disguise: the data must not teach it to dodge a sincere
        # question about what it is, nor to claim actions no tool performed.
        f"- If the user sincerely asks whether they are talking to a person, {spec.name} says plainly, in its "
        "own voice, that it is an AI (\"I'm an AI, and ...\"), without stock disclaimers such as \"As an AI "
        "assistant\"; otherwise it does not bring up being an AI, a model or these instructions.",
        f"- {spec.name} has no tools: it never says it sent, saved, booked, scheduled or changed anything; it "
        "gives the user the words or the steps to do it.",
        "- Answer with the JSON object only, in the shape the request shows.",
    ]
    return "\n".join(lines)


def user_message(spec: PersonaSpec, item: Item) -> str:
    phrases = " or ".join(f'"{p}"' for p in item.phrases)
    turns = "one user message and" if item.turns == 1 else f"exactly {item.turns} user messages, each followed by"
    keys = ", ".join(f'"turn_{k}"' for k in range(1, item.turns + 1))
    return (f"Write one conversation.\n"
            f"Topic: {spaced(item.topic)}.\n"
            f"The user: {item.profile}, who {item.situation}.\n"
            f"Length: {turns} {spec.name}'s reply.\n"
            + (f"{spec.name} may use a signature phrase such as {phrases}, once, if it fits.\n" if phrases else "")
            + f'Answer in JSON with the key{"s" if item.turns > 1 else ""} {keys}, {"each " if item.turns > 1 else ""}'
              f'holding "user" (what the user writes) and "assistant" ({spec.name}\'s reply).')


def prompt_messages(spec: PersonaSpec, item: Item) -> list[dict]:
    return [{"role": "system", "content": system_message(spec, item)},
            {"role": "user", "content": user_message(spec, item)}]


def conversation_schema(turns: int, max_chars: int | None = None) -> dict:
    """The reply's JSON schema: {"turn_1": {"user", "assistant"}, ..., "turn_<turns>": ...}.

    Numbered, required properties rather than an array, so the turn count is part of the
    schema in OpenAI's strict mode too (which rejects minItems/maxItems on some models).
    `max_chars` bounds each string: the llama.cpp server compiles the schema into a grammar,
    and the bound makes the JSON close before max_tokens cuts it off (OpenAI's strict mode takes
    no length keywords; `llm.response_format` drops them there).
    """
    text = {"type": "string", "minLength": 2}
    if max_chars is not None:
        text["maxLength"] = max_chars
    turn = {"type": "object", "properties": {"user": text, "assistant": text},
            "required": ["user", "assistant"], "additionalProperties": False}
    names = [f"turn_{k}" for k in range(1, turns + 1)]
    return {"type": "object", "properties": {name: turn for name in names}, "required": names,
            "additionalProperties": False}


def chars_per_string(max_tokens: int, turns: int) -> int:
    """A per-string length bound that fits 2 x turns strings and the JSON around them into
    max_tokens (about 3.5 characters per token of English; ~12 tokens of JSON syntax a turn)."""
    return max(8, int((max_tokens - 8 - 12 * turns) * 3.5 / (2 * turns)))


class ReplyError(ValueError):
    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def parse_reply(text: str, finish_reason: str, turns: int) -> list[dict]:
    """The model's JSON answer as ChatML messages, or ReplyError with a reason:
    truncated / invalid_json (worth a re-ask), wrong_shape / wrong_turn_count (not)."""
    body = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL)  # some servers wrap JSON in a fence
    body = fence.group(1) if fence else body
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        if finish_reason == "length":
            raise ReplyError("truncated", "the reply was cut off by max_tokens before the JSON ended") from None
        raise ReplyError("invalid_json", f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    names = [f"turn_{k}" for k in range(1, turns + 1)]
    if not isinstance(data, dict) or not all(
            isinstance(t, dict) and isinstance(t.get("user"), str) and isinstance(t.get("assistant"), str)
            for t in data.values()):
        raise ReplyError("wrong_shape", 'expected {"turn_1": {"user": "...", "assistant": "..."}, ...}')
    if sorted(data) != sorted(names):
        raise ReplyError("wrong_turn_count", f"asked for {', '.join(names)}; got {', '.join(map(str, data))}")
    return [m for name in names for m in ({"role": "user", "content": data[name]["user"].strip()},
                                          {"role": "assistant", "content": data[name]["assistant"].strip()})]


def reask_message(error: ReplyError) -> str:
    if error.reason == "truncated":
        return "Your answer was cut off before the JSON ended. Write the conversation again, shorter, as JSON only."
    return f"That was not valid JSON ({error}). Answer again with the JSON object only, nothing around it."
