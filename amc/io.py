"""Small I/O helpers used everywhere: atomic writes, reading text/JSON/YAML with clear errors,
the one rule for names and for where outputs may go.

Every file the suite writes goes through :func:`atomic_write` so that an
interrupted job never leaves a file that looks complete. Every text file it reads goes
through :func:`read_text` (or the JSON/YAML readers built on it), so a missing file, a
folder, undecodable bytes or malformed syntax is a :class:`DataError` naming the file and
line, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from types import ModuleType
from typing import IO, Any

log = logging.getLogger(__name__)


class AmcError(Exception):
    """An error a person can act on; the CLI prints it without a traceback."""


class DataError(AmcError, ValueError):
    """Bad input data; the message names the file (and line or entry) and the problem."""


# --------------------------------------------------------------------------- writing


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux >= 4.7)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path``; rename it into place only on success.

    The file gets the permissions a plain ``open`` would give it (``0o666`` less the umask),
    not ``mkstemp``'s private 0600, so a team sharing a results folder can read it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write one JSON object per line, atomically; returns the number of rows."""
    count = 0
    with atomic_write(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, separators=(",", ":")) + "\n")
            count += 1
    return count


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one row to a log that grows while a job runs (``metrics.jsonl``, ``selection.jsonl``).

    A crash mid-append can leave a torn last line; :func:`read_append_log` drops it.
    """
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


# --------------------------------------------------------------------------- reading


def read_text(path: str | os.PathLike | Traversable, what: str = "file") -> str:
    """The text of a UTF-8 file (a path, or a shipped resource); a DataError names the file when it is
    missing, a folder or undecodable."""
    path = Path(path) if isinstance(path, str | os.PathLike) else path
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a {what}")
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        with path.open(encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError:
        data = path.read_bytes()  # only on failure: find where
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            raise DataError(
                f"{path}:{line}: not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start})"
            ) from None
        raise


def _json_loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not valid JSON (line {error.lineno}: {error.msg})") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read JSON Lines; a malformed line is an error naming the file and line."""
    path = Path(path)
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def read_append_log(path: str | os.PathLike) -> list[dict]:
    """Read a log written by :func:`append_jsonl` ([] when absent).

    A last line that is not valid JSON is what a crash mid-append leaves: it is dropped with a
    warning. Any other malformed line is an error naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = read_text(path).splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                log.warning("%s:%d: a torn last line (the job stopped mid-write); dropped", path, number)
                break
            raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    return _json_loads(read_text(path), str(path))


def read_yaml(path: str | os.PathLike | Traversable, what: str = "YAML file") -> Any:
    """A YAML file, safely loaded; malformed YAML is a DataError naming the file and line."""
    import yaml

    text = read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise DataError(f"{path}{line}: not valid YAML ({problem})") from None


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- values


def is_finite_number(value: Any) -> bool:
    """An int or a finite float (not a bool, not NaN or infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


Place = tuple[str | int, ...]  # keys and list indexes from the root of a JSON-like document


def find_non_finite(node: Any, place: Place = ()) -> tuple[Place, float] | None:
    """The place and value of the first NaN or infinite number in a JSON-like ``node`` (Python's
    JSON and YAML readers accept both), or None."""
    if isinstance(node, float) and not math.isfinite(node):
        return place, node
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in children:
        if (found := find_non_finite(value, (*place, key))) is not None:
            return found
    return None


def place_text(root: str, place: Place) -> str:
    """``root.key[0].key``: a place in a document, as error messages name it."""
    return root + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in place)


def import_jsonschema() -> ModuleType:
    """jsonschema, imported (when this process has not yet) without its optional ``rfc3987_syntax``.

    jsonschema's format checkers import ``rfc3987_syntax`` (installed with jsonschema[format-nongpl],
    e.g. by Jupyter) for the ``iri`` formats, and that import builds some 40 Lark parsers: about 1 s
    on an idle core, several on a busy machine, paid by every process that validates a configuration
    (each Snakemake run of the workflow, the HTML report's own Snakemake, each ``amc train``). Our
    schemas use no ``format``, so the module is hidden from that one import; jsonschema then goes
    without the ``iri`` checkers, as when the module is not installed (jsonschema issue #1428).
    """
    if "jsonschema" not in sys.modules and "rfc3987_syntax" not in sys.modules:
        sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]  # importing it raises ImportError
        try:
            import jsonschema
        finally:
            del sys.modules["rfc3987_syntax"]
    import jsonschema

    return jsonschema


def schema_validator(schema: dict, checks: Mapping[str, Any] | None = None) -> Any:
    """A JSON Schema (draft 2020-12) validator of ``schema`` whose "integer" is a Python int: JSON
    Schema also takes 2.0, which a batch size or a seed is not. ``checks``: keywords replaced
    (e.g. ``properties``, to fill in defaults)."""
    jsonschema = import_jsonschema()
    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    )
    return jsonschema.validators.extend(base, dict(checks or {}), type_checker=checker)(schema)


# --------------------------------------------------------------------------- names and paths

# The one pattern of every name that becomes part of a path: methods (declared and
# sweep-generated), runs, exports, download artifacts. A letter or digit first, no "..",
# no "/": a name is one path component that stays where it is put. The workflow schema
# (amc/resources/config.schema.yaml, $defs.name) carries the same text; a test keeps them equal.
NAME_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._+-]*$(?!\n)"  # (?!\n): Python's $ also matches before one
_NAME_RE = re.compile(NAME_PATTERN)
NAME_RULE = "a letter or digit, then letters, digits, '.', '_', '+', '-'; no '..', no '/'"  # in words


def is_name(value: Any) -> bool:
    return isinstance(value, str) and _NAME_RE.search(value) is not None


def check_name(value: Any, where: str) -> str:
    """``value`` if it is a name (:data:`NAME_PATTERN`), else an AmcError naming ``where``."""
    if not is_name(value):
        raise AmcError(f"{where}: {value!r} is not a name ({NAME_RULE})")
    return value


def confined(root: str | os.PathLike, relative: str | os.PathLike, where: str) -> Path:
    """``root / relative``, refusing a ``relative`` that is absolute or leads outside ``root``.

    The one check of every output path made from configured or generated parts (results
    paths from method names, archive members, manifest paths). Lexical: ``root`` itself may be
    a link (a results folder on scratch space).
    """
    text = os.fspath(relative)
    parts = text.replace("\\", "/").split("/")
    if not text or text.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", text) or ".." in parts:
        raise AmcError(f"{where}: {text!r} must be a relative path inside {root}")
    if "\0" in text or "\n" in text:
        raise AmcError(f"{where}: {text!r} holds a control character")
    return Path(root) / text


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(
    outputs: Mapping[str, str | os.PathLike | None],
    inputs: Mapping[str, str | os.PathLike | None] = {},  # noqa: B006 (read only)
    folders: Mapping[str, str | os.PathLike | None] = {},  # noqa: B006 (read only)
) -> None:
    """Check where a command will write, before it reads or computes anything.

    ``outputs`` are files (label -> path: a flag such as ``--out`` and what it names), ``folders``
    output folders, ``inputs`` what the command reads. Each output must be creatable (no file
    where a folder is needed, no folder where a file goes) and must not be any input: a result
    never overwrites what it was made from.
    """
    for label, folder in folders.items():
        if folder is None:
            continue
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise AmcError(f"{label} {folder}: is a file, not a folder")
        _check_parents(label, folder)
    for label, path in outputs.items():
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise AmcError(f"{label} {path}: is a folder; give a file name")
        _check_parents(label, path)
    given = [(label, Path(path)) for label, path in outputs.items() if path is not None]
    for number, (label, path) in enumerate(given):
        for other_label, other in given[:number]:
            if _same_file(path, other):
                raise AmcError(f"{label} {path}: is also {other_label}; two outputs would be one file")
    for in_label, source in inputs.items():
        if source is None:
            continue
        for label, path in outputs.items():
            if path is not None and _same_file(Path(path), Path(source)):
                raise AmcError(f"{label} {path}: is also {in_label}; an output never overwrites an input")


def _check_parents(label: str, path: Path) -> None:
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise AmcError(f"{label} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK) and not path.exists():
                raise AmcError(f"{label} {path}: cannot write in {parent} (permission denied)")
            return
