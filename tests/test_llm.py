"""persona_lib.llm: secrets stay hidden, retries follow the rules, both structured-output
dialects, and the local llama.cpp server (real, on loopback)."""

import copy
import json
import pickle
import socket
import urllib.request
from dataclasses import asdict

import pytest

from persona_lib import llm

KEY = "sk-test-SECRET-0123456789abcdef"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "minLength": 2, "maxLength": 40}},
          "required": ["answer"], "additionalProperties": False}
MESSAGES = [{"role": "system", "content": "You answer in JSON."}, {"role": "user", "content": "Say hello."}]


# --------------------------------------------------------------------------- the key


def test_endpoint_never_shows_its_key():
    endpoint = llm.Endpoint.openai("gpt-4o-mini", api_key=KEY)
    for text in (repr(endpoint), str(endpoint), f"{endpoint}", f"{endpoint.api_key}", repr(asdict(endpoint))):
        assert "SECRET" not in text and "sk-test" not in text
    with pytest.raises(TypeError):
        json.dumps(asdict(endpoint))  # a Secret is not JSON: it cannot end up in a file by accident
    assert "SECRET" not in json.dumps(asdict(endpoint), default=str)
    with pytest.raises(TypeError):
        pickle.dumps(endpoint.api_key)
    assert copy.deepcopy(endpoint).api_key.reveal() == KEY


def test_key_comes_from_the_environment_and_is_required_for_openai(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", f"  {KEY}\n")
    assert llm.openai_api_key().reveal() == KEY
    assert llm.Endpoint.openai().api_key.reveal() == KEY
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert llm.openai_api_key() is None
    with pytest.raises(llm.MissingKeyError, match="OPENAI_API_KEY"):
        llm.Endpoint.openai()
    local = llm.Endpoint.compatible("http://localhost:11434/v1", "llama3.2", kind="ollama")
    assert local.api_key is None and local.dialect == "json_schema" and local.source == "ollama:llama3.2"


def test_key_comes_from_colab_secrets_when_the_environment_has_none(monkeypatch):
    import sys
    import types

    class SecretNotFoundError(Exception):
        pass

    class NotebookAccessError(Exception):
        pass

    secrets = {"OPENAI_API_KEY": KEY}

    def get(name):
        if name not in secrets:
            raise SecretNotFoundError(name)
        return secrets[name]

    userdata = types.SimpleNamespace(get=get, SecretNotFoundError=SecretNotFoundError,
                                     NotebookAccessError=NotebookAccessError)
    colab = types.ModuleType("google.colab")
    colab.userdata = userdata
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
    assert llm.openai_api_key().reveal() == KEY
    secrets.clear()
    assert llm.openai_api_key() is None


def test_endpoint_config_is_validated():
    with pytest.raises(ValueError, match="kind"):
        llm.Endpoint.compatible("http://x/v1", "m", kind="mystery")
    with pytest.raises(ValueError, match="http"):
        llm.Endpoint.compatible("localhost:8000/v1", "m")
    with pytest.raises(ValueError, match="dialect"):
        llm.Endpoint.compatible("http://x/v1", "m", dialect="xml")
    assert llm.Endpoint.compatible("http://x/v1/", "m", kind="llamacpp").dialect == "json_object"


def test_redact_masks_keys_and_bearer_tokens():
    secret = llm.Secret(KEY)
    text = f"Incorrect API key provided: {KEY}; header Bearer {KEY}; other sk-proj-abcd****wxyz"
    out = llm.redact(text, secret)
    assert "SECRET" not in out and "abcd" not in out and "wxyz" not in out
    assert "sk-********" in out


# --------------------------------------------------------------------------- dialects and retries


def test_response_format_speaks_both_dialects():
    openai = llm.response_format(SCHEMA, "json_schema")
    assert openai["type"] == "json_schema" and openai["json_schema"]["strict"] is True
    assert "maxLength" not in json.dumps(openai)  # strict mode rejects length keywords
    local = llm.response_format(SCHEMA, "json_object")
    assert local == {"type": "json_object", "schema": SCHEMA}
    with pytest.raises(ValueError):
        llm.response_format(SCHEMA, "yaml")


def test_backoff_is_full_jitter_and_retry_after_wins():
    import random

    policy = llm.RetryPolicy(base_delay=1.0, max_delay=8.0)
    rng = random.Random(0)
    for attempt in range(1, 8):
        draws = [policy.delay(attempt, rng=rng) for _ in range(200)]
        ceiling = min(8.0, 2 ** (attempt - 1))
        assert 0 <= min(draws) and max(draws) <= ceiling and max(draws) > 0.5 * ceiling
    assert policy.delay(3, retry_after=2.5) == 2.5


def test_retry_after_header_forms():
    assert llm.retry_after_seconds({"retry-after-ms": "250", "retry-after": "7"}) == 0.25
    assert llm.retry_after_seconds({"retry-after": "3"}) == 3.0
    assert llm.retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert llm.retry_after_seconds({"retry-after": "soon"}) is None
    assert llm.retry_after_seconds({}) is None


def test_429s_are_retried_after_retry_after_then_given_up(serve):
    server, url = serve(fault_rate=1.0, faults=("rate_limit",), retry_after=0.15)
    endpoint = llm.Endpoint.compatible(url, "fake", timeout=5)
    seen = []
    with pytest.raises(llm.RequestFailed) as failed:
        llm.chat(endpoint, MESSAGES, schema=SCHEMA,
                 retry=llm.RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.02),
                 on_retry=lambda reason, wait: seen.append((reason, wait)))
    assert failed.value.reason == "gave_up_429" and failed.value.attempts == 4
    assert server.stats()["requests"] == 4
    assert seen == [("429", 0.15)] * 3  # the header's wait, not the (much shorter) backoff draw
    times = [r["time"] for r in server.log]
    assert all(b - a >= 0.15 for a, b in zip(times, times[1:]))


def test_500_and_timeouts_are_retried_until_an_answer(serve):
    server, url = serve(fault_rate=0.6, faults=("server_error", "timeout"), hang=1.0, seed=3)
    endpoint = llm.Endpoint.compatible(url, "fake", timeout=0.3)
    reply = llm.chat(endpoint, MESSAGES, schema=SCHEMA, retry=llm.RetryPolicy.fast(), seed=1)
    assert json.loads(reply.text)["answer"]
    assert reply.attempts == server.stats()["requests"]
    assert sum(reply.retries.values()) == reply.attempts - 1


def test_llamacpp_dialect_fallback(serve):
    server, url = serve(fault_rate=0.0, dialect="llamacpp")
    endpoint = llm.Endpoint.compatible(url, "fake")  # "compatible" starts with OpenAI's dialect
    reply = llm.chat(endpoint, MESSAGES, schema=SCHEMA)
    assert json.loads(reply.text)["answer"] and endpoint.dialect == "json_object"
    assert server.stats()["requests"] == 2
    llm.chat(endpoint, MESSAGES, schema=SCHEMA)
    assert server.stats()["requests"] == 3  # remembered: no second rejected request


def test_wrong_key_fails_at_once_without_showing_it(serve):
    server, url = serve(api_key="sk-the-right-one", echo_auth=True)
    endpoint = llm.Endpoint.openai("gpt-4o-mini", api_key=KEY, base_url=url)
    with pytest.raises(llm.RequestFailed) as failed:
        llm.chat(endpoint, MESSAGES, schema=SCHEMA)
    assert failed.value.reason == "http_401" and failed.value.attempts == 1
    assert "SECRET" not in str(failed.value) and "OPENAI_API_KEY" in str(failed.value)
    assert server.stats()["auth_failures"] == 1


def test_insufficient_quota_is_not_retried(serve, monkeypatch):
    server, url = serve(fault_rate=0.0)
    endpoint = llm.Endpoint.compatible(url, "fake")

    def no_credit(handler, body):
        server.log.append({"time": 0, "item": "", "fault": "quota", "auth_ok": True})
        handler._send(429, {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                                      "code": "insufficient_quota"}})

    monkeypatch.setattr(server, "_handle", no_credit)
    with pytest.raises(llm.RequestFailed, match="billing") as failed:
        llm.chat(endpoint, MESSAGES)
    assert failed.value.reason == "insufficient_quota" and server.stats()["requests"] == 1


# --------------------------------------------------------------------------- the real llama.cpp server


def test_local_server_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        llm.local_server(tmp_path / "missing.gguf")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(llm.LocalServerError, match=f"port {port}.*in use"):
            llm.local_server(port=port).start()
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(llm.LocalServerError, match="exited during start-up"):
        llm.local_server(bad, startup_timeout=60).start()


def test_local_llamacpp_server_speaks_its_dialect_and_shuts_down():
    """The real server: OpenAI's json_schema dialect gets HTTP 500; chat() answers
    with schema-valid JSON anyway; leaving the block stops the process and frees the port."""
    import openai

    server = llm.local_server()
    with server as endpoint:
        assert endpoint.kind == "llamacpp" and endpoint.parallel == 1
        port = int(endpoint.base_url.rsplit(":", 1)[1].split("/")[0])
        with urllib.request.urlopen(f"{endpoint.base_url}/models", timeout=5) as r:
            assert r.status == 200
        raw = llm.client(endpoint)
        with pytest.raises(openai.InternalServerError, match="json_object"):
            raw.chat.completions.create(model=endpoint.model, messages=MESSAGES, max_tokens=8,
                                        response_format=llm.response_format(SCHEMA, "json_schema"))
        reply = llm.chat(endpoint, MESSAGES, schema=SCHEMA, max_tokens=40, temperature=0.0, seed=0)
        answer = json.loads(reply.text)["answer"]
        assert isinstance(answer, str) and 2 <= len(answer) <= 40
        process = server.process
    assert process.poll() is not None and server.process is None
    assert not llm.port_in_use(port)


def test_an_answer_that_is_not_a_chat_completion_is_retried(serve, monkeypatch):
    server, url = serve(fault_rate=0.0)
    real = server._handle
    calls = []

    def proxy_page_first(handler, body):
        calls.append(1)
        if len(calls) == 1:
            handler._send(200, {"html": "<h1>502 from a proxy</h1>"})
        else:
            real(handler, body)

    monkeypatch.setattr(server, "_handle", proxy_page_first)
    reply = llm.chat(llm.Endpoint.compatible(url, "fake"), MESSAGES, schema=SCHEMA, retry=llm.RetryPolicy.fast())
    assert reply.retries == {"bad_response": 1} and json.loads(reply.text)["answer"]
