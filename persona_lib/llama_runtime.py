"""Running GGUF files in llama.cpp (llama-cpp-python): loading a file, the chat template it carries,
greedy decoding token by token, the end-of-turn check, and a base GGUF with persona LoRA GGUFs
switched per request. Lesson 7 chats with the exported files through these."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Mapping, Sequence


class ExportError(RuntimeError):
    """An export step that cannot go on; the message says which file or resource and the fix."""


def default_threads() -> int:
    """Half the cores: llama.cpp's threads spin-wait, and one thread per core collapses as soon
    as anything else runs on the machine (see persona_lib.llm.LocalServer)."""
    return max(1, (os.cpu_count() or 2) // 2)


def load_gguf(path: str | os.PathLike, *, n_ctx: int = 2048, lora_path: str | os.PathLike | None = None,
              threads: int | None = None):
    """A `llama_cpp.Llama` over a GGUF file (optionally with one GGUF LoRA), quiet."""
    from llama_cpp import Llama

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"GGUF file not found: {path}")
    return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads or default_threads(), seed=0, verbose=False,
                 lora_path=str(lora_path) if lora_path else None)


def chat_formatter(llm):
    """The prompt builder llama-cpp-python uses for this GGUF: a Jinja2 rendering of the
    file's own `tokenizer.chat_template`, with its BOS/EOS texts (as `Llama.__init__` builds
    it). `create_chat_completion` and `python -m llama_cpp.server` format chats with it.

    (llama.cpp's C function `llama_chat_apply_template` does not run Jinja: it recognises the
    template as ChatML and applies a built-in one, which leaves out SmolLM2's default system
    prompt when a chat has none. tests/test_export.py shows the difference.)
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    if llm.chat_format != "chat_template.default":
        raise ExportError(f"llama.cpp chose the built-in chat format {llm.chat_format!r} for this GGUF, not the "
                          "template in the file; the GGUF has no usable tokenizer.chat_template")
    return Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"],
                               eos_token=token_text(llm, llm.token_eos()), bos_token=token_text(llm, llm.token_bos()),
                               stop_token_ids=[llm.token_eos()])


def token_text(llm, token: int) -> str:
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")


def gguf_prompt(llm, messages: Sequence[dict]) -> str:
    """The prompt text llama.cpp (llama-cpp-python) builds for `messages` from this GGUF."""
    return chat_formatter(llm)(messages=list(messages)).prompt


def is_end_of_generation(llm, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), token))


def greedy_ids(llm, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation of `prompt_ids` up to the first end-of-generation token (excluded)."""
    llm.reset()
    out: list[int] = []
    for token in llm.generate(list(prompt_ids), temp=0.0, repeat_penalty=1.0):
        if is_end_of_generation(llm, token) or len(out) >= max_new_tokens:
            break
        out.append(token)
    return out


def end_of_turn_text(llm) -> str:
    """What the GGUF's own chat template writes right after an assistant message: the text
    that ends a turn (`<|im_end|>` in ChatML, `<|eot_id|>` in Llama 3), found by rendering a
    probe conversation, so any template family is read the same way."""
    probe = "ASSISTANT-7f3a9"
    prompt = gguf_prompt(llm, [{"role": "user", "content": "u"}, {"role": "assistant", "content": probe},
                               {"role": "user", "content": "v"}])
    after = prompt.split(probe, 1)[1]
    eos = token_text(llm, llm.token_eos())
    return eos if after.startswith(eos) else after.strip().split()[0] if after.strip() else ""


def chat_check(llm, messages: Sequence[dict], *, max_tokens: int = 64, end_of_turn: str | None = None) -> dict:
    """Chat once in llama.cpp and check the end of a turn.

    - the GGUF's EOS is the token that ends an assistant turn (`end_of_turn`, by default what
      the GGUF's own chat template writes after an assistant message) and llama.cpp treats it
      as end-of-generation;
    - a free greedy reply (`finish_reason` "stop" when the model ended its turn itself);
    - with the end-of-turn token forced as the first token (a logit bias), the reply must
      come back empty with `finish_reason` "stop": llama.cpp stops there and does not print it.
    """
    eos = llm.token_eos()
    eos_text = token_text(llm, eos)
    end_of_turn = end_of_turn or end_of_turn_text(llm)
    reply = llm.create_chat_completion(list(messages), temperature=0.0, max_tokens=max_tokens)["choices"][0]
    forced = llm.create_chat_completion(list(messages), temperature=0.0, max_tokens=8,
                                        logit_bias={eos: 100.0})["choices"][0]
    result = {
        "eos_token": eos_text,
        "end_of_turn": end_of_turn,
        "eos_is_end_of_turn": eos_text == end_of_turn,
        "eos_is_end_of_generation": is_end_of_generation(llm, eos),
        "reply": reply["message"]["content"],
        "finish_reason": reply["finish_reason"],
        "forced_end_of_turn_stops": forced["finish_reason"] == "stop" and forced["message"]["content"] == "",
    }
    checks = ("eos_is_end_of_turn", "eos_is_end_of_generation", "forced_end_of_turn_stops")
    result["ok"] = all(result[k] for k in checks)
    return result


class PersonaAdapters:
    """One base GGUF in memory and several GGUF LoRA adapters; `use(name)` switches persona.

        personas = PersonaAdapters("base.f16.gguf", {"taskmaster": "taskmaster.lora.gguf", ...})
        personas.use("taskmaster"); personas.chat(messages)
        personas.use(None)  # the base model alone

    This is llama.cpp's multi-LoRA: each adapter is loaded once (a few MB) and switching only
    changes which one the context applies, so three personas cost one base in memory.
    """

    def __init__(self, base_gguf: str | os.PathLike, adapters: Mapping[str, str | os.PathLike], *,
                 n_ctx: int = 2048):
        import llama_cpp

        self.llm = load_gguf(base_gguf, n_ctx=n_ctx)
        self.adapters = {}
        for name, path in adapters.items():
            handle = llama_cpp.llama_adapter_lora_init(self.llm.model, str(path).encode())
            if not handle:
                raise ExportError(f"llama.cpp could not load the LoRA {path} over {base_gguf}: was it converted "
                                  "with convert_lora from an adapter of this base model?")
            self.adapters[name] = handle  # freed with the model (llama.cpp owns adapters per model)
        self.active: str | None = None

    def use(self, name: str | None, scale: float = 1.0) -> None:
        import llama_cpp

        if name is None:
            code = llama_cpp.llama_set_adapters_lora(self.llm.ctx, None, 0, None)
        else:
            if name not in self.adapters:
                raise KeyError(f"no adapter named {name!r}; loaded: {', '.join(self.adapters)}")
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.adapters[name])
            code = llama_cpp.llama_set_adapters_lora(self.llm.ctx, handles, 1, (ctypes.c_float * 1)(scale))
        if code != 0:
            raise ExportError(f"llama_set_adapters_lora failed for {name!r} (code {code})")
        self.llm.reset()  # the cached prompt was computed under the previous adapter
        self.active = name

    def chat(self, messages: Sequence[dict], **kw) -> dict:
        return self.llm.create_chat_completion(list(messages), **kw)

    def reply(self, messages: Sequence[dict], max_tokens: int = 64) -> str:
        """A greedy reply under the active adapter."""
        return self.chat(messages, temperature=0.0, max_tokens=max_tokens)["choices"][0]["message"]["content"]

    def close(self) -> None:
        self.llm.close()
