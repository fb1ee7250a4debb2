"""Small file helpers: every artifact is written atomically (temp file or folder, then rename)."""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence


def canonical_sha256(value: Any, *, escape_non_ascii: bool = False) -> str:
    """sha256 of `value` as canonical JSON (keys sorted, UTF-8, anything else by its str): the
    one hash the library keys caches, folders and records on, so equal inputs always match.
    `escape_non_ascii` writes "°" as "\\u00b0" first: the form `persona run`'s stage records have
    always been keyed on (a changed digest would redo every stage of an existing run)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=escape_non_ascii, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return atomic_write_text(path, lines)


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield one dict per non-empty line; a broken line raises with its file and line number."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return list(iter_jsonl(path))


def identity(path: str | os.PathLike, include: Sequence[str] = ("*",)) -> dict | None:
    """What a file or folder is, cheaply: each file's name, size and modification time (no
    hashing: a merged 3B model is 6 GB). In a folder, only the files whose path inside it
    matches one of the `include` patterns count. None when it does not exist."""
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()
                 and any(fnmatch.fnmatch(p.relative_to(path).as_posix(), pattern) for pattern in include)]
        return {"path": str(path.resolve()), "files": sorted(
            (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)}
    return None


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `final` (file or folder) that becomes `final` only when the
    block ends without error; otherwise it is removed and `final` is left as it was.

    A partial path left by a run that was killed outright is cleared on the next try.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial")
    remove(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"the step writing {final} finished without writing anything")
        if final.exists():
            remove(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            remove(tmp)
