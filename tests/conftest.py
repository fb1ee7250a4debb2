"""Shared fixtures. Tests never touch the network: the Hub is switched off for the session,
and every model is built locally (see persona_lib.models)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


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
