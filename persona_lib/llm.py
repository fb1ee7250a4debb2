"""OpenAI-compatible endpoints: OpenAI itself, any base URL (Ollama, vLLM, a llama.cpp server),
and a local llama.cpp server this module starts on 127.0.0.1 with the embedded GGUF.

    endpoint = Endpoint.openai("gpt-4o-mini")           # key from OPENAI_API_KEY or Colab's Secrets
    endpoint = Endpoint.compatible("http://localhost:11434/v1", "llama3.2", kind="ollama")
    with local_server() as endpoint:                     # llama.cpp + SmolLM2, offline
        reply = chat(endpoint, messages, schema=schema, max_tokens=200)

The API key lives in a `Secret`: its repr and str are masked and `json.dumps` refuses it, so
printing, logging or serialising an endpoint never shows the key. `chat` retries 429, 5xx,
time-outs and dropped connections with exponential backoff and full jitter, waits what a
Retry-After header asks, and speaks both structured-output dialects: OpenAI's
`{"type": "json_schema", ...}` and llama.cpp's `{"type": "json_object", "schema": ...}` (the
llama.cpp server answers the first with HTTP 500; tests/test_llm.py shows it).
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

OPENAI_BASE_URL = "https://api.openai.com/v1"
# Cheap, strong at following a JSON schema, and priced in generate.PRICES: ~$0.05 for 200 examples.
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
KEY_NAME = "OPENAI_API_KEY"  # the environment variable, and the name of the Colab secret

KINDS = ("openai", "llamacpp", "ollama", "vllm", "compatible")
DIALECTS = ("json_schema", "json_object")


class Secret:
    """A string that never shows itself: repr/str/format print a mask, json.dumps raises.

    `reveal()` is the one way to get the value, used only where the HTTP client is built.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str):
        if not isinstance(value, str) or not value.strip():
            raise ValueError("an API key must be a non-empty string")
        self._value = value.strip()

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):
        raise TypeError("a Secret cannot be pickled or copied to disk")

    def __deepcopy__(self, memo):  # dataclasses.asdict deep-copies fields; keep the same object
        return self


_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*.]{3,}|Bearer\s+\S+)")


def redact(text: str, secret: Secret | None = None) -> str:
    """`text` with the secret and anything shaped like an API key (sk-..., Bearer ...) masked.

    Error messages can carry a key: OpenAI's 401 quotes part of it, and a proxy may echo the
    Authorization header. Everything this package writes to a file goes through here.
    """
    if secret is not None:
        text = text.replace(secret.reveal(), "********")
    return _KEY_LIKE.sub(lambda m: "Bearer ********" if m.group(0).startswith("Bearer") else "sk-********", text)


def openai_api_key() -> Secret | None:
    """The OpenAI key from the environment (OPENAI_API_KEY), else from Colab's Secrets panel
    (a secret named OPENAI_API_KEY with notebook access switched on), else None."""
    from persona_lib.colab import secret

    value = secret(KEY_NAME)
    return Secret(value) if value else None


@dataclass
class Endpoint:
    """Where chat requests go. The key is a `Secret` (masked in repr); the rest is plain config."""

    base_url: str  # up to and including /v1, e.g. http://127.0.0.1:8080/v1
    model: str  # the model name the server expects in each request
    kind: str = "compatible"  # openai | llamacpp | ollama | vllm | compatible: picks the dialect and prices
    api_key: Secret | None = None  # None for local servers; OpenAI needs one
    timeout: float = 120.0  # seconds per request: a long JSON answer from a slow local model takes a minute
    parallel: int | None = None  # requests the server works on at once (None: no known limit)
    # Structured-output dialect; "" picks by kind. chat() switches json_schema -> json_object
    # for good when a server rejects the first (the llama.cpp server does, with HTTP 500).
    dialect: str = ""
    source: str = field(default="")  # label written into generated records; "" -> "<kind>:<model>"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not re.match(r"^https?://", self.base_url):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r} "
                             "(e.g. http://localhost:11434/v1 for Ollama)")
        if isinstance(self.api_key, str):
            self.api_key = Secret(self.api_key)
        if self.api_key is None and self.kind == "openai":
            raise MissingKeyError(f"OpenAI needs an API key: set {KEY_NAME} in the environment, or add it in "
                                  f"Colab's Secrets panel (key icon) as {KEY_NAME} with notebook access on")
        if not self.model.strip():
            raise ValueError("model is empty; give the model name the server expects")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        if self.parallel is not None and self.parallel < 1:
            raise ValueError(f"parallel must be at least 1 or None, got {self.parallel}")
        self.dialect = self.dialect or ("json_object" if self.kind == "llamacpp" else "json_schema")
        if self.dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, not {self.dialect!r}")
        self.base_url = self.base_url.rstrip("/")
        self.source = self.source or (self.model if self.kind == "openai" else f"{self.kind}:{self.model}")

    @classmethod
    def openai(cls, model: str = DEFAULT_OPENAI_MODEL, api_key: Secret | str | None = None,
               base_url: str = OPENAI_BASE_URL, **kw) -> "Endpoint":
        """OpenAI's API; the key defaults to `openai_api_key()` (environment, then Colab Secrets)."""
        return cls(base_url=base_url, model=model, kind="openai", api_key=api_key or openai_api_key(), **kw)

    @classmethod
    def compatible(cls, base_url: str, model: str, kind: str = "compatible", **kw) -> "Endpoint":
        """Any OpenAI-compatible server: Ollama (http://localhost:11434/v1), vLLM
        (http://localhost:8000/v1), a llama.cpp server (kind="llamacpp")."""
        return cls(base_url=base_url, model=model, kind=kind, **kw)


class MissingKeyError(RuntimeError):
    """No API key where one is needed; the message says where to put it."""


class RequestFailed(RuntimeError):
    """A request that failed for good: a non-retryable error, or retries used up."""

    def __init__(self, reason: str, message: str, attempts: int):
        self.reason = reason  # short label: "http_401", "insufficient_quota", "gave_up_500", ...
        self.attempts = attempts
        super().__init__(message)


def client(endpoint: Endpoint):
    """An `openai.OpenAI` client for the endpoint, with the client's own retries off (chat()
    retries, counting and honouring Retry-After itself).

    The key is always passed explicitly: left out, the openai client would read OPENAI_API_KEY
    and send the user's OpenAI key to whatever base URL this is.
    """
    import openai

    key = endpoint.api_key.reveal() if endpoint.api_key else "no-key"
    return openai.OpenAI(api_key=key, base_url=endpoint.base_url, max_retries=0, timeout=endpoint.timeout)


# JSON-schema keywords OpenAI's strict mode rejects ("'maxLength' is not permitted"); the
# llama.cpp server's grammar compiler uses them, so only the json_schema dialect drops them.
_NOT_STRICT = ("minLength", "maxLength")


def _strict(schema):
    if isinstance(schema, dict):
        return {k: _strict(v) for k, v in schema.items() if k not in _NOT_STRICT}
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def response_format(schema: dict, dialect: str, name: str = "record") -> dict:
    """The structured-output request in OpenAI's dialect (json_schema, strict) or llama.cpp's
    (json_object with the schema beside it)."""
    if dialect == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": _strict(schema), "strict": True}}
    if dialect == "json_object":
        return {"type": "json_object", "schema": schema}
    raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, not {dialect!r}")


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter (AWS Architecture Blog, 2015): attempt k waits a
    uniform random time in [0, min(max_delay, base_delay * 2**k)], so clients that failed
    together do not retry together. A Retry-After header overrides the draw."""

    max_attempts: int = 8  # at a 30% failure rate, 8 tries all fail with probability 0.3**8 = 7e-5
    base_delay: float = 1.0  # seconds; OpenAI rate limits reset within seconds
    max_delay: float = 60.0  # a minute: long enough for a per-minute rate window to reset
    max_retry_after: float = 300.0  # a server asking for more than 5 minutes is down; give up instead

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError(f"need 0 <= base_delay <= max_delay, got {self.base_delay}, {self.max_delay}")

    @classmethod
    def fast(cls) -> "RetryPolicy":
        """For local servers and tests: the same shape in tenths of a second."""
        return cls(max_attempts=8, base_delay=0.05, max_delay=1.0)

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return retry_after
        return (rng or random).uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


def retry_after_seconds(headers) -> float | None:
    """The wait a response asks for: retry-after-ms (OpenAI), else Retry-After in seconds or as
    an HTTP date (RFC 9110). None when absent or unreadable."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(float(value) / scale, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        parsed = email.utils.parsedate_tz(value)
        if parsed is not None:
            return max(email.utils.mktime_tz(parsed) - time.time(), 0.0)
    return None


@dataclass
class Reply:
    """One chat completion and what it cost to get."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int  # HTTP requests sent, retries included
    retries: dict[str, int] = field(default_factory=dict)  # reason -> count: "429", "500", "timeout", ...


def _rejects_json_schema(error) -> bool:
    """The llama.cpp server's answer to OpenAI's json_schema dialect (HTTP 500, a pydantic error
    naming 'json_schema'); other servers say 400/422 with the same word."""
    return getattr(error, "status_code", None) in (400, 422, 500) and "json_schema" in str(error)


def _classify(error) -> tuple[str, bool, float | None]:
    """(reason label, retryable?, Retry-After seconds) for an exception from the openai client."""
    import openai

    if isinstance(error, openai.APITimeoutError):
        return "timeout", True, None
    if isinstance(error, openai.APIConnectionError):
        return "connection", True, None
    if isinstance(error, openai.APIResponseValidationError):
        return "bad_response", True, None
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        if status == 429 and error.code == "insufficient_quota":
            return "insufficient_quota", False, None  # out of credit: waiting will not help
        retryable = status in (408, 409, 429) or status >= 500
        return str(status), retryable, retry_after_seconds(error.response.headers) if retryable else None
    raise error


def chat(endpoint: Endpoint, messages: list[dict], *, schema: dict | None = None, schema_name: str = "record",
         max_tokens: int = 512, temperature: float = 0.7, seed: int | None = None, retry: RetryPolicy | None = None,
         http=None, rng: random.Random | None = None,
         on_retry: Callable[[str, float], None] | None = None) -> Reply:
    """One chat completion with retries; `schema` asks for structured output in the endpoint's
    dialect (switching dialects once if the server rejects json_schema).

    Raises RequestFailed for errors retrying cannot fix (401, 400, no credit) and when
    `retry.max_attempts` are used up. `http`: a client from `client(endpoint)` to reuse its
    connections; `on_retry(reason, wait_seconds)` is told about every retry.
    """
    import openai

    retry = retry or RetryPolicy()
    http = http or client(endpoint)
    retries: dict[str, int] = {}
    attempts = 0
    while True:
        kw = dict(model=endpoint.model, messages=messages, max_tokens=max_tokens, temperature=temperature)
        if seed is not None:
            kw["seed"] = seed
        if schema is not None:
            kw["response_format"] = response_format(schema, endpoint.dialect, schema_name)
        attempts += 1
        wait = None
        try:
            result = http.chat.completions.create(**kw)
            choice, usage = result.choices[0], result.usage
            return Reply(text=choice.message.content or "", finish_reason=choice.finish_reason or "",
                         prompt_tokens=usage.prompt_tokens if usage else 0,
                         completion_tokens=usage.completion_tokens if usage else 0,
                         attempts=attempts, retries=retries)
        except openai.APIError as e:
            if schema is not None and endpoint.dialect == "json_schema" and _rejects_json_schema(e):
                endpoint.dialect = "json_object"  # the llama.cpp dialect, from now on
                attempts -= 1
                continue
            reason, retryable, wait = _classify(e)
            message = redact(f"{endpoint.base_url}: {reason}: {e}", endpoint.api_key)
        except (AttributeError, TypeError, IndexError):  # HTTP 200, but not a chat completion (a proxy page?)
            reason, retryable = "bad_response", True
            message = f"{endpoint.base_url}: the answer is not a chat completion"
        if not retryable:
            hint = {"401": " (the API key was rejected: check OPENAI_API_KEY)",
                    "insufficient_quota": " (the account is out of credit: check billing)"}.get(reason, "")
            raise RequestFailed(f"http_{reason}" if reason.isdigit() else reason, message + hint, attempts)
        if wait is not None and wait > retry.max_retry_after:
            raise RequestFailed(f"gave_up_{reason}", f"{message} (server asks to wait {wait:.0f} s)", attempts)
        if attempts >= retry.max_attempts:
            raise RequestFailed(f"gave_up_{reason}", f"{message} (after {attempts} attempts)", attempts)
        retries[reason] = retries.get(reason, 0) + 1
        pause = retry.delay(attempts, wait, rng)
        if on_retry is not None:
            on_retry(reason, pause)
        time.sleep(pause)


# --------------------------------------------------------------------------- local llama.cpp server


class LocalServerError(RuntimeError):
    """The local llama.cpp server could not start; the message says why and what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on the port. SO_REUSEADDR, as servers set it, so that closed
    connections still in TIME_WAIT do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies (Linux prctl
    PR_SET_PDEATHSIG), so a killed notebook kernel does not leave a server behind."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class LocalServer:
    """`python -m llama_cpp.server` on 127.0.0.1 with a GGUF model, as a context manager or with
    start()/stop(). The llama.cpp server answers one request at a time (others wait in line),
    so its endpoint says parallel=1."""

    def __init__(self, model_path: str | os.PathLike | None = None, *, port: int | None = None,
                 host: str = "127.0.0.1", n_ctx: int = 4096, n_threads: int | None = None,
                 startup_timeout: float = 120.0, timeout: float = 300.0, log_path: str | os.PathLike | None = None):
        from persona_lib.models import embedded_gguf_path

        # n_ctx 4096: the generation prompt (spec + instructions, ~700 tokens) plus a few-turn answer.
        # n_threads half the cores: llama.cpp's threads spin-wait, and one per core collapses as soon
        # as anything else runs (measured on the shared 2-core box: 1 thread 5-13 s a request, 2 threads 28-59 s).
        # timeout 300 s per request: requests queue behind each other on this one-at-a-time server.
        self.model_path = Path(model_path) if model_path is not None else embedded_gguf_path()
        if not self.model_path.is_file():
            raise FileNotFoundError(f"GGUF model file not found: {self.model_path}. Pass the path of a .gguf "
                                    "file, or leave model_path empty for the embedded SmolLM2-135M")
        self.host, self.port, self.n_ctx = host, port, n_ctx
        self.n_threads = n_threads or max(1, (os.cpu_count() or 2) // 2)
        self.startup_timeout, self.timeout = startup_timeout, timeout
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen | None = None
        self.endpoint: Endpoint | None = None
        self._log = None

    def start(self) -> Endpoint:
        if self.process is not None:
            raise LocalServerError("this server is already running; call stop() first")
        if self.port is not None and port_in_use(self.port, self.host):
            raise LocalServerError(f"port {self.port} on {self.host} is already in use (another server?). "
                                   "Pass port=None to pick a free port, or stop whatever listens there")
        port = self.port or free_port(self.host)
        alias = self.model_path.stem
        if self.log_path is None:
            self.log_path = Path(tempfile.mkdtemp(prefix="llama-server-")) / "server.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path), "--model_alias", alias,
               "--host", self.host, "--port", str(port), "--n_ctx", str(self.n_ctx),
               "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads)]
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        base_url = f"http://{self.host}:{port}/v1"
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                tail = self._log_tail()
                self._cleanup()
                if "address already in use" in tail.lower():
                    raise LocalServerError(f"port {port} on {self.host} was taken before the server could bind it; "
                                           "start again (port=None picks another free port)")
                raise LocalServerError(f"the llama.cpp server exited during start-up (code "
                                       f"{self.process.returncode if self.process else '?'}); its log "
                                       f"({self.log_path}) ends with:\n{tail}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise LocalServerError(f"the llama.cpp server did not answer within {self.startup_timeout:.0f} s; "
                                       f"see its log {self.log_path}, or raise startup_timeout on a slow machine")
            time.sleep(0.2)
        self.endpoint = Endpoint(base_url=base_url, model=alias, kind="llamacpp", timeout=self.timeout, parallel=1)
        return self.endpoint

    def _log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _cleanup(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; idempotent."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        self._cleanup()
        self.endpoint = None

    def __enter__(self) -> Endpoint:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def local_server(model_path: str | os.PathLike | None = None, **kw) -> LocalServer:
    """A local llama.cpp server on a free port of 127.0.0.1, for `with local_server() as endpoint:`.

    `model_path`: a GGUF file; None means the embedded SmolLM2-135M. Start-up takes a few
    seconds; the block's end shuts the server down.
    """
    return LocalServer(model_path, **kw)


@contextlib.contextmanager
def connect(openai_model: str = DEFAULT_OPENAI_MODEL, model_path: str | os.PathLike | None = None,
            **server_kw) -> Iterator[Endpoint]:
    """OpenAI when a key is available (environment or Colab Secrets), else a local llama.cpp
    server; says plainly which one it chose."""
    key = openai_api_key()
    if key is not None:
        print(f"Using OpenAI ({openai_model}); the key comes from {KEY_NAME} and is never printed.")
        yield Endpoint.openai(openai_model, api_key=key)
        return
    print(f"No OpenAI API key found (set {KEY_NAME}, or add it to Colab's Secrets panel). Using a local "
          "llama.cpp server with the embedded SmolLM2-135M instead: free and offline, but a 135M model "
          "writes weak data, so only a few examples.")
    with local_server(model_path, **server_kw) as endpoint:
        yield endpoint
