"""A fault-injecting OpenAI-compatible chat server on 127.0.0.1, for tests and bench/bench_generate.py.

It answers POST /v1/chat/completions with a schema-valid JSON object built from the request's
own JSON schema (either dialect), and at `fault_rate` of requests it misbehaves instead:

    rate_limit    HTTP 429 with retry-after-ms and Retry-After headers
    server_error  HTTP 500
    timeout       answers only after `hang` seconds (set it above the client's timeout)
    truncated     HTTP 200, the JSON cut in half, finish_reason "length"
    invalid_json  HTTP 200, prose around a Python-repr "JSON" that does not parse

Deterministic by seed: the fate of a request depends only on (seed, the request body, how many
times this exact body was seen), never on timing or arrival order, so a sequential and a
concurrent run meet the same faults per item and keep the same records. Good answers depend
only on the item (the first two messages), so a retried item gets the same content.

    with FaultServer(FaultConfig(latency=0.2, seed=1)) as url:   # http://127.0.0.1:PORT/v1
        ...
    python tests/fault_server.py --port 8099 --latency 0.2      # by hand
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("rate_limit", "server_error", "timeout", "truncated", "invalid_json")

# Pseudo-words from syllables: 10k combinations, so two generated texts share almost no
# 3-word shingles and never trip the near-duplicate filter by accident.
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


@dataclass
class FaultConfig:
    fault_rate: float = 0.3  # share of requests that misbehave (the 30% mix)
    latency: float = 0.0  # seconds added to every answer (the bench uses 0.2)
    seed: int = 0  # same seed, same faults for the same requests
    retry_after: float = 0.2  # seconds a 429 asks the client to wait
    hang: float = 2.0  # a "timeout" answers after this long: keep it above the client's timeout
    api_key: str | None = None  # require "Authorization: Bearer <api_key>" (401 otherwise)
    echo_auth: bool = False  # put the Authorization header into error bodies, as a leaky proxy might
    dialect: str = "openai"  # "llamacpp": answer json_schema with HTTP 500, as the llama.cpp server does
    faults: tuple[str, ...] = FAULTS  # which faults to draw from, uniformly

    def __post_init__(self):
        if not 0 <= self.fault_rate <= 1:
            raise ValueError(f"fault_rate must be in [0, 1], got {self.fault_rate}")
        unknown = set(self.faults) - set(FAULTS)
        if unknown or not self.faults:
            raise ValueError(f"faults must be a non-empty subset of {FAULTS}, got {self.faults}")
        if self.dialect not in ("openai", "llamacpp"):
            raise ValueError(f"dialect must be 'openai' or 'llamacpp', got {self.dialect!r}")


def item_key(messages: list[dict]) -> str:
    """The item a request belongs to: its first two messages (system + task prompt); re-asks and
    retries of one item share it."""
    text = "\x00".join(str(m.get("content", "")) for m in messages[:2])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_SYLLABLES) + rng.choice(_SYLLABLES) for _ in range(rng.randint(lo, hi)))


def fake_instance(schema: dict, rng: random.Random):
    """A value valid against the small JSON-schema subset generate.py uses (objects, arrays with
    min/maxItems, strings with min/maxLength), filled with pseudo-words."""
    kind = schema.get("type")
    if kind == "object":
        return {name: fake_instance(sub, rng) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        n = schema.get("minItems", 1)
        return [fake_instance(schema["items"], rng) for _ in range(n)]
    if kind == "string":
        text = _words(rng, 6, 14)
        text = text[:schema.get("maxLength", len(text))].strip()
        return text if len(text) >= schema.get("minLength", 0) else text + " ok"
    raise ValueError(f"fault_server cannot fill a schema of type {kind!r}")


def _schema_of(body: dict) -> dict | None:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return fmt["json_schema"]["schema"]
    if fmt.get("type") == "json_object":
        return fmt.get("schema")
    return None


def good_content(body: dict, seed: int = 0) -> str:
    """The answer to a request when nothing goes wrong: depends only on the item and the seed."""
    rng = random.Random(f"{seed}/{item_key(body['messages'])}")
    schema = _schema_of(body)
    if schema is None:
        return _words(rng, 8, 20)
    return json.dumps(fake_instance(schema, rng))


def completion(body: dict, content: str, finish_reason: str = "stop") -> dict:
    """An OpenAI chat.completion object around `content`, with rough token counts."""
    prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
    return {"id": "chatcmpl-" + hashlib.sha256(content.encode()).hexdigest()[:12], "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", "fault-server"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt // 4, "completion_tokens": len(content) // 4 + 1,
                      "total_tokens": prompt // 4 + len(content) // 4 + 1}}


class FaultServer:
    """The server in a background thread; `start()` returns the base URL (…/v1).

    `log` holds one dict per chat request: time, item, fault ("" for a good answer), status,
    auth_ok. `stats()` sums it up; `reset()` forgets bodies, counts and log.
    """

    def __init__(self, config: FaultConfig | None = None, port: int = 0):
        self.config = config or FaultConfig()
        self.port = port
        self.log: list[dict] = []
        self._seen: dict[str, int] = {}
        self._active = 0  # requests being handled right now
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects

            def log_message(self, *args):  # silence the per-request stderr line
                pass

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "fault-server", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                with server._lock:
                    server._active += 1
                try:
                    length = int(self.headers.get("Content-Length", 0))
                    raw = self.rfile.read(length)
                    if self.path.rstrip("/") != "/v1/chat/completions":
                        self._send(404, {"error": {"message": f"no route {self.path}"}})
                        return
                    server._handle(self, json.loads(raw))
                finally:
                    with server._lock:
                        server._active -= 1

            def _send(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a time-out): nothing to deliver

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def settle(self, quiet: float = 0.3, limit: float = 30.0) -> None:
        """Wait until no request is being handled and none has arrived for `quiet` seconds, so
        that a request the client already gave up on (a time-out) is in the log too."""
        deadline = time.monotonic() + limit
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            with self._lock:
                count, active = len(self.log), self._active
            if count != last or active:
                last, since = count, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.05)

    def reset(self) -> None:
        with self._lock:
            self.log.clear()
            self._seen.clear()

    def stats(self) -> dict:
        with self._lock:
            log = list(self.log)
        faults = {f: sum(r["fault"] == f for r in log) for f in FAULTS}
        return {"requests": len(log), "good": sum(r["fault"] == "" for r in log), "faults": faults,
                "items": len({r["item"] for r in log}), "auth_failures": sum(not r["auth_ok"] for r in log)}

    def _fate(self, body: dict) -> str:
        canonical = json.dumps(body, sort_keys=True)
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        with self._lock:
            nth = self._seen.get(digest, 0)
            self._seen[digest] = nth + 1
        rng = random.Random(f"{self.config.seed}/{digest}/{nth}")
        if rng.random() < self.config.fault_rate:
            return rng.choice(self.config.faults)
        return ""

    def _handle(self, handler, body: dict) -> None:
        cfg = self.config
        auth = handler.headers.get("Authorization", "")
        auth_ok = cfg.api_key is None or auth == f"Bearer {cfg.api_key}"
        fault = self._fate(body) if auth_ok else "auth"
        entry = {"time": time.monotonic(), "item": item_key(body.get("messages", [])), "fault": fault,
                 "auth_ok": auth_ok}
        with self._lock:
            self.log.append(entry)
        echo = f" (request from {auth})" if cfg.echo_auth else ""
        if not auth_ok:
            handler._send(401, {"error": {"message": f"Incorrect API key provided{echo}",
                                          "type": "invalid_request_error", "code": "invalid_api_key"}})
            return
        fmt = body.get("response_format") or {}
        if cfg.dialect == "llamacpp" and fmt.get("type") == "json_schema":
            handler._send(500, {"error": {"message": "1 validation error: ('body', 'response_format', 'type') "
                                                     "Input should be 'text' or 'json_object'; got json_schema",
                                          "type": "internal_server_error"}})
            return
        time.sleep(cfg.hang if fault == "timeout" else cfg.latency)
        if fault == "rate_limit":
            handler._send(429, {"error": {"message": f"Rate limit reached{echo}", "type": "requests",
                                          "code": "rate_limit_exceeded"}},
                          {"retry-after-ms": str(int(cfg.retry_after * 1000)),
                           "Retry-After": str(math.ceil(cfg.retry_after))})
        elif fault == "server_error":
            handler._send(500, {"error": {"message": f"The server had an error{echo}", "type": "server_error"}})
        else:
            content = good_content(body, cfg.seed)
            if fault == "truncated":
                handler._send(200, completion(body, content[:len(content) // 2], "length"))
            elif fault == "invalid_json":
                broken = repr(json.loads(content))  # single quotes: not JSON
                handler._send(200, completion(body, f"Sure! Here is the conversation you asked for:\n{broken}"))
            else:
                handler._send(200, completion(body, content))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8099)
    p.add_argument("--fault-rate", type=float, default=0.3)
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    server = FaultServer(FaultConfig(fault_rate=args.fault_rate, latency=args.latency, seed=args.seed), args.port)
    print(f"fault server on {server.start()} (Ctrl-C stops it)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
