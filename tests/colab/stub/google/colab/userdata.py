"""Colab's Secrets panel with no secret stored: what a learner without an OpenAI key has."""


class SecretNotFoundError(Exception):
    pass


class NotebookAccessError(Exception):
    pass


def get(key: str) -> str:
    raise SecretNotFoundError(key)
