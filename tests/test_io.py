import pytest

from persona_lib import io


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    io.write_json(path, {"good": True})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(OSError):
        io.write_json(path, {"good": False})
    assert io.read_json(path) == {"good": True}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_broken_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(ValueError, match=r"x.jsonl:3: not valid JSON"):
        io.read_jsonl(path)


def test_canonical_sha256_is_the_on_disk_key_format():
    """Caches, generated data and run records are keyed on it: the same value in any key order
    hashes the same, and the text is hashed as UTF-8, unescaped (changing either would set
    aside every learner's generated conversations and cached answers)."""
    import hashlib

    from persona_lib.io import canonical_sha256

    value = {"b": ["café", 2], "a": {"y": 1, "x": None}}
    assert canonical_sha256(value) == canonical_sha256({"a": {"x": None, "y": 1}, "b": ["café", 2]})
    text = '{"a": {"x": null, "y": 1}, "b": ["café", 2]}'
    assert canonical_sha256(value) == hashlib.sha256(text.encode()).hexdigest()
    assert canonical_sha256(value) != canonical_sha256({**value, "b": ["cafe", 2]})


def test_persona_run_stage_keys_keep_their_escaped_form():
    """`persona run` records each stage's fingerprint; a spec with "180°C" in it must hash as it
    always has, or every stage of an existing run (paid generation included) is redone."""
    import hashlib

    from persona_lib.pipeline import fingerprint

    inputs = {"spec": {"description": "Bake at 180°C — then rest it"}, "seed": 0}
    escaped = '{"seed": 0, "spec": {"description": "Bake at 180\\u00b0C \\u2014 then rest it"}}'
    assert fingerprint(inputs) == hashlib.sha256(escaped.encode()).hexdigest()
