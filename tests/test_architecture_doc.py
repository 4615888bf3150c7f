"""docs/architecture.md stays true: a line for every module, and the result schema's table is the schema's.

The table of result fields is generated from amc/resources/result.schema.json by
:func:`schema_table`; when the schema changes, paste what the failing test prints
(``python -c "from tests.test_architecture_doc import schema_table; print(schema_table())"``).
"""

from __future__ import annotations

import json
import re

from amc.resources import RESULT_SCHEMA, resource
from tests.helpers import REPO

DOC = REPO / "docs" / "architecture.md"
BEGIN = "<!-- result schema table: generated from amc/resources/result.schema.json (tests/test_architecture_doc.py) -->"
END = "<!-- end of the result schema table -->"


def _type(spec: dict) -> str:
    """A field's JSON Schema type and range, in words."""
    if "const" in spec:
        return f"`{json.dumps(spec['const'])}`"
    if "enum" in spec:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in spec["enum"])
    kinds = spec.get("type", "any")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    text = " or ".join(kinds)
    if "minimum" in spec and "maximum" in spec:
        text += f" in [{spec['minimum']}, {spec['maximum']}]"
    elif "minimum" in spec:
        text += f" >= {spec['minimum']}"
    if spec.get("minLength") == 1:
        text = "non-empty " + text
    if "pattern" in spec:
        text += f" matching `{spec['pattern']}`"
    if "format" in spec:
        text += f" ({spec['format']})"
    if "items" in spec:
        count = spec.get("minItems")
        size = f"{count} " if count is not None and count == spec.get("maxItems") else ""
        text = f"array of {size}{_type(spec['items'])}"
    if isinstance(spec.get("additionalProperties"), dict):
        keys = spec.get("propertyNames", {}).get("enum")
        key = " / ".join(f"`{k}`" for k in keys) if keys else "name"
        text = f"object: {key} -> {_type(spec['additionalProperties'])}"
    return text


def _rows(spec: dict, prefix: str) -> list[tuple[str, str, bool, str]]:
    rows = []
    required = set(spec.get("required", ()))
    for name, field in spec.get("properties", {}).items():
        path = f"{prefix}{name}"
        rows.append((path, _type(field), name in required, field.get("description", "")))
        if field.get("type") == "object" and "properties" in field:
            rows += _rows(field, f"{path}.")
        elif field.get("type") == "array" and "properties" in field.get("items", {}):
            rows += _rows(field["items"], f"{path}[].")
    return rows


def schema_rows() -> list[tuple[str, str, bool, str]]:
    """(field, type, required, description) for every field of the result schema, in its order."""
    schema = json.loads(resource(RESULT_SCHEMA).read_text())
    return _rows(schema, "")


def schema_table() -> str:
    lines = [BEGIN, "| field | type | required | meaning |", "|---|---|---|---|"]
    for path, kind, required, description in schema_rows():
        lines.append(f"| `{path}` | {kind} | {'yes' if required else 'no'} | {description} |")
    return "\n".join([*lines, END])


def test_the_result_schema_table_is_generated_from_the_schema():
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"{DOC}: the generated result schema table is missing"
    found = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert found == schema_table(), f"{DOC}: regenerate the result schema table:\n{schema_table()}"
    fields = {row[0] for row in schema_rows()}
    assert {"format", "summary.accuracy", "summary.explainer.layer", "cases[].energy"} <= fields


def _module_table() -> list[str]:
    text = DOC.read_text()
    section = text[text.index("## Modules") : text.index("## File formats")]
    return re.findall(r"^\| `([^`]+\.py)` \|", section, flags=re.MULTILINE)


def test_every_module_has_one_line_and_no_line_is_dead():
    listed = _module_table()
    modules = sorted(str(p.relative_to(REPO)) for d in ("amc", "baselines") for p in (REPO / d).rglob("*.py"))
    assert sorted(set(listed)) == sorted(listed), "a module listed twice"
    assert sorted(set(modules) - set(listed)) == [], "modules without a line in docs/architecture.md"
    assert sorted(set(listed) - set(modules)) == [], "lines for modules that do not exist"
