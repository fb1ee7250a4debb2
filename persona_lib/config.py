"""One way to save, load and explain the project's settings dataclasses.

Every stage has a config dataclass (TrainConfig, EvalConfig, ExportConfig, GenerateConfig,
JudgeConfig, MultiConfig, RunConfig). Each inherits `Settings`, which gives it the same dict
and YAML round trip, the same error for a misspelt field, and `field_docs()`: the comment
written after each field, read from the source, so a field's reason is written once, at its
definition, and the CLI's help shows it.

    config = TrainConfig.from_yaml("my_run.yaml", num_epochs=3)   # file, then overrides
    config.to_yaml("runs/taskmaster/adapter/train_config.yaml")
"""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any


def plain(value: Any) -> Any:
    """Tuples as lists, recursively: what YAML and JSON write and read back."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class Settings:
    """Mixin for the settings dataclasses: dicts, YAML and field documentation."""

    def to_dict(self) -> dict:
        return plain(asdict(self))

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        import yaml

        from persona_lib import io

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            io.atomic_write_text(path, text)
        return text

    @classmethod
    def from_dict(cls, data: dict, **overrides):
        """The config from a mapping of field values (any subset; the rest keep their
        defaults), then `overrides`. A field that does not exist is an error naming the known
        ones: a misspelt setting must not be silently ignored."""
        return cls(**{**cls.known(data), **overrides})

    @classmethod
    def known(cls, data: dict) -> dict:
        """`data` itself when it is a mapping of this config's fields; else a ValueError."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}; "
                             f"known fields are {', '.join(sorted(names))}")
        return data

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides):
        """Load a YAML file of fields (any subset); errors name the file."""
        try:
            return cls.from_dict(read_yaml(path), **overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Each field's why-comment (the text after `  # ` on its line), read from the source.

        Kept over `field(metadata={"help": ...})`, the form transformers' HfArgumentParser
        reads: that would wrap every field of every config in a call, and the configs are read
        by learners as they stand (lesson 4 prints TrainConfig's fields with these comments)."""
        import ast
        import inspect
        import textwrap

        source = textwrap.dedent(inspect.getsource(cls))
        lines = source.splitlines()
        docs = {}
        for node in ast.parse(source).body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                line = lines[node.lineno - 1]
                docs[node.target.id] = line.split("  # ", 1)[1].strip() if "  # " in line else ""
        return docs


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML file that must hold a mapping; a missing file or a YAML error names the file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data
