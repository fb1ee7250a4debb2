"""Shared fixtures. Tests never touch the network: the Hub is switched off for the session,
and every model is built locally (see persona_lib.models)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Taken out of the environment, so the pytest runs some tests start (the Colab lane) do not
# write their own, smaller report over this session's.
REPORT = os.environ.pop("PERSONA_LAB_TEST_REPORT", None)

import pytest


def pytest_sessionstart(session):
    import time

    session.started_at = time.time()


def pytest_sessionfinish(session, exitstatus):
    """With PERSONA_LAB_TEST_REPORT=FILE, write the run's size and time there as JSON (the
    README's test-suite figure comes from such a file, kept in bench/results/)."""
    if not REPORT:
        return
    import platform
    import time

    from persona_lib.io import write_json

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    counts = {k: len(v) for k, v in (reporter.stats.items() if reporter else []) if k in
              ("passed", "failed", "skipped", "error", "xfailed", "xpassed")}
    write_json(REPORT, {"what": "the README's test command (pytest with the repository's settings)",
                      "collected": session.testscollected, "outcomes": counts, "exit_status": int(exitstatus),
                      "seconds": round(time.time() - session.started_at, 1),
                      "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}})


@pytest.fixture(scope="session")
def tiny_path() -> str:
    from persona_lib.models import resolve

    return resolve("tiny")


@pytest.fixture(scope="session")
def tiny(tiny_path):
    """(model, tokenizer) of the tiny random-init model; tests must not train it in place."""
    from persona_lib.models import load_model

    return load_model("tiny")


@pytest.fixture
def serve():
    """Start fault-injecting OpenAI-compatible servers on loopback: `server, url = serve(**FaultConfig fields)`;
    every server started is stopped after the test."""
    from fault_server import FaultConfig, FaultServer

    servers = []

    def start(**kw):
        server = FaultServer(FaultConfig(**kw))
        servers.append(server)
        return server, server.start()

    yield start
    for server in servers:
        server.stop()
