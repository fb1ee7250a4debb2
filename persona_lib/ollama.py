"""Ollama: the tokenizer's chat template as a Modelfile TEMPLATE, the Modelfile itself (stop
tokens, parameters, an optional LoRA adapter over a base GGUF), reading one back, and the
commands that create and run the model (lesson 7's deployment step)."""

from __future__ import annotations

import re

from persona_lib.llama_runtime import ExportError

# ChatML, the template family of SmolLM2 (and Qwen): the only one `ollama_template` writes.
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def ollama_template(tokenizer) -> tuple[str, str | None] | None:
    """The tokenizer's chat template as an Ollama TEMPLATE (Go text/template over `.Messages`),
    with the default system prompt the template inserts when a chat has none (or None).

    Written for ChatML templates, recognised by rendering probe chats; any other template
    gives None: leave TEMPLATE out and Ollama picks a template matching the GGUF's own.
    """
    s, u, a, v = "SYS-7f3a9", "USER-7f3a9", "ASSISTANT-7f3a9", "USER2-7f3a9"

    def render(messages):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def turn(role, content):
        return f"{IM_START}{role}\n{content}{IM_END}\n"

    tail = turn("user", u) + turn("assistant", a) + turn("user", v) + f"{IM_START}assistant\n"
    chat = [{"role": "user", "content": u}, {"role": "assistant", "content": a}, {"role": "user", "content": v}]
    if render([{"role": "system", "content": s}, *chat]) != turn("system", s) + tail:
        return None
    plain = render(chat)
    if not plain.endswith(tail):
        return None
    prefix = plain[: -len(tail)]
    match = re.fullmatch(re.escape(IM_START) + r"system\n(.*)" + re.escape(IM_END) + r"\n", prefix, re.DOTALL)
    if prefix and not match:
        return None
    default = match.group(1) if match else None
    if default is not None and ("{{" in default or '"""' in default):
        raise ExportError("the chat template's default system prompt contains '{{' or '\"\"\"', which an Ollama "
                          "TEMPLATE cannot hold literally; write the Modelfile by hand")
    insert_default = (
        '{{- if and .Messages (ne (index .Messages 0).Role "system") }}'
        f"{IM_START}system\n{default}{IM_END}\n{{{{ end }}}}\n"
        if default is not None else ""
    )
    body = (f"{{{{- range .Messages }}}}{IM_START}{{{{ .Role }}}}\n{{{{ .Content }}}}{IM_END}\n{{{{ end }}}}"
            f"{IM_START}assistant\n")
    return insert_default + body, default


def modelfile(gguf: str, tokenizer, *, adapter: str | None = None, system: str | None = None,
              temperature: float = 0.3, num_ctx: int = 2048, title: str = "") -> str:
    """An Ollama Modelfile for a GGUF (paths relative to the Modelfile's folder).

    TEMPLATE is the training chat template (see `ollama_template`); SYSTEM defaults to the
    template's own default system prompt, the one every training example was rendered with,
    so Ollama sends the model exactly the prompts it was trained on. Pass `system` for a
    model trained with a system prompt (the conditioned multi-persona adapter).
    """
    converted = ollama_template(tokenizer)
    lines = [f"# {title}" if title else "# Exported by persona-lab"]
    lines += [f"FROM ./{gguf}"]
    if adapter:
        lines += [f"ADAPTER ./{adapter}"]
    if converted is None:
        lines += ["# TEMPLATE left out: this chat template is not ChatML, and Ollama picks the template",
                  "# matching the one embedded in the GGUF file (`ollama show --modelfile` prints it)."]
        stops = [tokenizer.eos_token]
        default = None
    else:
        template, default = converted
        lines += [f'TEMPLATE """{template}"""']
        stops = [IM_END, IM_START]
    system = system if system is not None else default
    if system:
        if '"""' in system:
            raise ExportError('a SYSTEM prompt cannot contain """ in a Modelfile')
        lines += ["# The persona lives in the weights; SYSTEM is the system prompt the model saw in training.",
                  f'SYSTEM """{system}"""']
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER temperature {temperature:g}", f"PARAMETER num_ctx {num_ctx}"]
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict:
    """The instructions of a Modelfile: {"from", "adapter", "template", "system", "parameters":
    {name: [values]}}. Values in triple quotes keep every character between the quotes."""
    out: dict = {"parameters": {}}
    pos = 0
    instruction = re.compile(r"[ \t]*(\w+)[ \t]+")
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        line = text[pos:end]
        if not line.strip() or line.lstrip().startswith("#"):
            pos = end + 1
            continue
        m = instruction.match(text, pos)
        if not m:
            raise ValueError(f"Modelfile line {text.count(chr(10), 0, pos) + 1}: expected an instruction, got {line!r}")
        name, start = m.group(1).upper(), m.end()
        if name == "PARAMETER":
            key, _, value = text[start:end].strip().partition(" ")
            value = value.strip()
            out["parameters"].setdefault(key, []).append(value[1:-1] if value.startswith('"') else value)
            pos = end + 1
            continue
        if text.startswith('"""', start):
            close = text.find('"""', start + 3)
            if close < 0:
                raise ValueError(f"Modelfile: {name} opens a triple-quoted value that never closes")
            value, pos = text[start + 3:close], text.find("\n", close) + 1 or len(text)
        else:
            value, pos = text[start:end].strip().strip('"'), end + 1
        out[name.lower()] = value
    return out


def ollama_commands(name: str, modelfile_path: str = "Modelfile") -> list[str]:
    """What to run on the laptop, in the folder holding the Modelfile and the GGUF."""
    return [f"ollama create {name} -f {modelfile_path}", f"ollama run {name}"]
