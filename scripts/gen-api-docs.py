#!/usr/bin/python3
"""Renders docs/api.md, the human-readable API reference, from server/openapi/openapi.json.

  /usr/bin/python3 scripts/gen-api-docs.py            # (re)write docs/api.md
  /usr/bin/python3 scripts/gen-api-docs.py --check    # exit 1 when docs/api.md is not what the document gives

The OpenAPI document is the source of truth: edit it, then run this. Standard library only;
the output depends on the document alone (no dates), so --check is exact.
"""

import argparse
import difflib
import json
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENT = os.path.join(REPO, "server", "openapi", "openapi.json")
OUT = os.path.join(REPO, "docs", "api.md")
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
ACCESS = {"open": "open", "read": "read key¹", "admin": "admin key²"}


class Doc:
    def __init__(self, document):
        self.d = document

    def pointer(self, ref):
        node = self.d
        for key in ref[2:].split("/"):
            node = node[key.replace("~1", "/").replace("~0", "~")]
        return node

    def deref(self, node):
        seen = 0
        while isinstance(node, dict) and "$ref" in node:
            node = self.pointer(node["$ref"])
            seen += 1
            if seen > 32:
                raise ValueError("$ref chain too long")
        return node


def anchor(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def schema_name(ref):
    return ref.rsplit("/", 1)[-1]


def cell(text):
    """Text for a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def type_of(doc, schema):
    """A schema as a short type expression, with links to named schemas."""
    if schema is None:
        return "any"
    if "$ref" in schema:
        name = schema_name(schema["$ref"])
        return f"[{name}](#{anchor('schema-' + name)})"
    if "allOf" in schema:
        parts = [type_of(doc, s) for s in schema["allOf"] if "$ref" in s or "type" in s]
        return " & ".join(parts) if parts else "object"
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return " | ".join(type_of(doc, s) for s in schema[key])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " | ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    types = schema.get("type")
    if isinstance(types, list):
        return " | ".join(type_of(doc, dict(schema, type=t)) for t in types)
    if types == "array":
        return f"array of {type_of(doc, schema.get('items'))}"
    if types == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not schema.get("properties"):
            return f"object of {type_of(doc, extra)}"
        return "object"
    if types:
        bounds = []
        if "minimum" in schema:
            bounds.append(f"≥ {schema['minimum']}")
        if "maximum" in schema:
            bounds.append(f"≤ {schema['maximum']}")
        if "minLength" in schema and types == "string":
            bounds.append("non-empty")
        return types + (f" ({', '.join(bounds)})" if bounds else "")
    return "any"


def fields_table(doc, schema, lines):
    """The properties of an object schema as a table (name, type, required, meaning)."""
    schema = doc.deref(schema)
    props = schema.get("properties") or {}
    if not props:
        return False
    required = set(schema.get("required") or [])
    lines.append("| field | type | required | meaning |")
    lines.append("|---|---|---|---|")
    for name, prop in props.items():
        meaning = prop.get("description", "") if isinstance(prop, dict) else ""
        if not meaning and isinstance(prop, dict) and "$ref" in prop:
            meaning = doc.deref(prop).get("description", "")
        if isinstance(prop, dict) and "default" in prop:
            meaning = (meaning + " " if meaning else "") + f"Default `{json.dumps(prop['default'])}`."
        lines.append(f"| `{name}` | {cell(type_of(doc, prop))} | {'yes' if name in required else ''} | "
                     f"{cell(meaning)} |")
    extra = schema.get("additionalProperties")
    if extra is False:
        lines.append("")
        lines.append("Other fields are refused (400 `invalid_request`)." if schema.get("x-request") else
                     "No other fields.")
    elif isinstance(extra, dict):
        lines.append("")
        lines.append(f"Other fields: {type_of(doc, extra)}.")
    one_of = schema.get("oneOf")
    if one_of and all(set(s) == {"required"} for s in one_of):
        lines.append("")
        lines.append("Exactly one of " + ", ".join(f"`{s['required'][0]}`" for s in one_of) + ".")
    return True


def pretty(value, indent=0, width=100, prefix=0):
    """JSON with every value that fits on its line kept on one line (`prefix`: columns before it)."""
    compact = json.dumps(value, ensure_ascii=False)
    if indent + prefix + len(compact) <= width or not isinstance(value, (dict, list)) or not value:
        return compact
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            key = json.dumps(k, ensure_ascii=False) + ": "
            items.append(pad + key + pretty(v, indent + 2, width, len(key)))
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + pretty(v, indent + 2, width) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def json_block(value, lines):
    lines.append("```json")
    lines.append(pretty(value))
    lines.append("```")


def examples(doc, examples_obj, label, shown, lines):
    """Example blocks; ones already shown elsewhere (shared $refs) become one link."""
    elsewhere = {}
    for name, example in (examples_obj or {}).items():
        ref = example.get("$ref") if isinstance(example, dict) else None
        resolved = doc.deref(example)
        title = resolved.get("summary") or name
        if ref and ref in shown:
            elsewhere.setdefault(shown[ref], []).append(title)
            continue
        lines.append(f"{label} — {title}:")
        lines.append("")
        json_block(resolved.get("value"), lines)
        lines.append("")
        if ref:
            shown[ref] = CURRENT[0]
    for (where, where_anchor), titles in elsewhere.items():
        lines.append(f"{label}: " + "; ".join(titles) + f" — as in [{where}](#{where_anchor}).")
        lines.append("")


def error_codes_of(doc, response):
    """The error codes an error response allows (its enum), or []."""
    text = json.dumps(doc.deref(response))
    found = re.findall(r'"code": \{"enum": (\[[^\]]*\])', text)
    return json.loads(found[0]) if found else []


CURRENT = [("", "")]  # the route being rendered: (title, anchor), for links to shared examples


def render(document):
    doc = Doc(document)
    shown = {}
    d = document
    info = d.get("info", {})
    lines = []
    add = lines.append
    add(f"# {info.get('title', 'API')} (version {info.get('version', '?')})")
    add("")
    add("<!-- Generated from server/openapi/openapi.json by scripts/gen-api-docs.py: do not edit by hand;")
    add("     edit the document and run the script (scripts/gen-api-docs.py --check tells when this is stale). -->")
    add("")
    if info.get("summary"):
        add(info["summary"])
        add("")
    if info.get("description"):
        add(info["description"])
        add("")
    add("The machine-readable document is [`server/openapi/openapi.json`](../server/openapi/openapi.json), "
        "also served by the server at `GET /openapi.json`.")
    add("")

    # ---- routes --------------------------------------------------------------------------
    add("## Routes")
    add("")
    add("| method | path | access | summary |")
    add("|---|---|---|---|")
    ops = []
    for path, item in d.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                ops.append((path, method, item[method], item.get("parameters", [])))
    for path, method, op, _ in ops:
        title = f"{method.upper()} {path}"
        add(f"| {method.upper()} | [`{cell(path)}`](#{anchor(title)}) | {ACCESS.get(op.get('x-seqrec-access'), '')} | "
            f"{cell(op.get('summary', ''))} |")
    add("")
    add("¹ Only when the server runs with `--protect-reads` (the read key or the admin key); open otherwise. "
        "² Only when the server has an admin key (`--api-key-file` / `SEQREC_API_KEY`); open otherwise.")
    add("")

    # ---- keys --------------------------------------------------------------------------
    schemes = d.get("components", {}).get("securitySchemes", {})
    if schemes:
        add("## Keys")
        add("")
        for name, scheme in schemes.items():
            how = (f"HTTP `{scheme.get('scheme')}`" if scheme.get("type") == "http"
                   else f"header `{scheme.get('name')}`")
            add(f"- **{name}** ({how}): {scheme.get('description', '')}")
        add("")
        add("A key is checked from the request's header before its body is read; a missing or wrong key is "
            "401 `unauthorized` with `WWW-Authenticate: Bearer`.")
        add("")

    # ---- errors ------------------------------------------------------------------------
    schemas = d.get("components", {}).get("schemas", {})
    codes = schemas.get("ErrorCode", {}).get("x-seqrec-codes", {})
    add("## Errors")
    add("")
    error = schemas.get("Error", {})
    if error.get("description"):
        add(error["description"])
        add("")
    if error.get("examples"):
        json_block(error["examples"][0], lines)
        add("")
    if codes:
        add("| status | code | when |")
        add("|---|---|---|")
        for code, entry in sorted(codes.items(), key=lambda kv: (kv[1]["status"], list(codes).index(kv[0]))):
            add(f"| {entry['status']} | `{code}` | {cell(entry['description'])} |")
        add("")
    add("Every route can also answer 400 `bad_request` (bytes that are not HTTP), 405 `method_not_allowed`, "
        "500 `internal` and 503 `overloaded`; routes that take a body 413 `payload_too_large` and 415 "
        "`unsupported_encoding`; routes that need a key 401 `unauthorized`. An unknown path is 404 `not_found`.")
    add("")

    # ---- each route ----------------------------------------------------------------------
    add("## Route by route")
    add("")
    generic = {"bad_request", "method_not_allowed", "internal", "payload_too_large", "unsupported_encoding",
               "unauthorized"}
    for path, method, op, path_params in ops:
        title = f"{method.upper()} {path}"
        CURRENT[0] = (title, anchor(title))
        add(f'<a id="{anchor(title)}"></a>')
        add(f"### {title}")
        add("")
        if op.get("summary"):
            add(f"**{op['summary']}.** " + op.get("description", ""))
        elif op.get("description"):
            add(op["description"])
        add("")
        params = [doc.deref(p) for p in list(path_params) + list(op.get("parameters", []))]
        if params:
            add("| parameter | in | type | required | meaning |")
            add("|---|---|---|---|---|")
            for p in params:
                schema = p.get("schema", {})
                meaning = p.get("description", "")
                if "default" in schema:
                    meaning += f" Default `{schema['default']}`."
                add(f"| `{p['name']}` | {p['in']} | {cell(type_of(doc, schema))} | {'yes' if p.get('required') else ''} | "
                    f"{cell(meaning)} |")
            add("")
        body = op.get("requestBody")
        if body:
            for media, content in body.get("content", {}).items():
                schema = content.get("schema", {})
                optional = "" if body.get("required") else ", optional: the body may be empty"
                add(f"**Body** (`{media}`{optional}): {type_of(doc, schema)}")
                add("")
                target = doc.deref(schema)
                ref = schema.get("$ref")
                if ref and ref in shown:
                    add(f"Fields: as in [{shown[ref][0]}](#{shown[ref][1]}).")
                    add("")
                else:
                    if target.get("description") and ref:
                        add(target["description"])
                        add("")
                    fields_table(doc, dict(target, **{"x-request": True}), lines)
                    add("")
                    if ref:
                        shown[ref] = CURRENT[0]
                examples(doc, content.get("examples"), "Example", shown, lines)
        add("**Responses**")
        add("")
        add("| status | content | meaning |")
        add("|---|---|---|")
        responses = op.get("responses", {})
        for status, response in responses.items():
            resolved = doc.deref(response)
            content = resolved.get("content", {})
            kinds = []
            for media, media_obj in content.items():
                schema = media_obj.get("schema")
                if schema and "allOf" in schema and any("$ref" in s and s["$ref"].endswith("/Error") for s in schema["allOf"]):
                    kinds.append(f"`{media}` [Error](#schema-error)")
                else:
                    kinds.append(f"`{media}` {type_of(doc, schema)}" if schema else f"`{media}`")
            meaning = resolved.get("description", "").rstrip(".")
            codes_here = error_codes_of(doc, response)
            if codes_here:
                specific = [c for c in codes_here if c not in generic]
                meaning = ", ".join(f"`{c}`" for c in (specific or codes_here))
            headers = resolved.get("headers", {})
            if headers:
                meaning += "; header " + ", ".join(f"`{h}`" for h in headers)
            add(f"| {status} | {cell('; '.join(kinds))} | {cell(meaning)} |")
        add("")
        for status, response in responses.items():
            resolved = doc.deref(response)
            for media, media_obj in resolved.get("content", {}).items():
                examples(doc, media_obj.get("examples"), f"Answer {status}", shown, lines)
                if "example" in media_obj and not (media_obj.get("examples")):
                    add(f"Answer {status}:")
                    add("")
                    add("```")
                    add(str(media_obj["example"]).rstrip("\n"))
                    add("```")
                    add("")

    # ---- schemas -------------------------------------------------------------------------
    add("## Schemas")
    add("")
    for name, schema in schemas.items():
        add(f'<a id="{anchor("schema-" + name)}"></a>')
        add(f"### {name}")
        add("")
        if schema.get("description") and name != "ErrorCode":
            add(schema["description"])
            add("")
        if name == "ErrorCode":
            add("One of: " + ", ".join(f"`{c}`" for c in schema.get("enum", [])) + " (see [Errors](#errors)).")
            add("")
            continue
        if not fields_table(doc, schema, lines):
            add(f"Type: {type_of(doc, schema)}.")
        add("")
    return "\n".join(lines).rstrip("\n") + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the output file is stale")
    parser.add_argument("--document", default=DOCUMENT)
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    with open(args.document, encoding="utf-8") as f:
        document = json.load(f)
    text = render(document)
    if args.check:
        try:
            with open(args.out, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = ""
        if current != text:
            diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), args.out, "(generated)",
                                             lineterm="", n=1))
            print(f"gen-api-docs: {os.path.relpath(args.out, REPO)} is stale: run scripts/gen-api-docs.py "
                  f"({len(diff)} diff lines; first ones below)", file=sys.stderr)
            print("\n".join(diff[:40]), file=sys.stderr)
            return 1
        print(f"gen-api-docs: {os.path.relpath(args.out, REPO)} is up to date")
        return 0
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"gen-api-docs: wrote {os.path.relpath(args.out, REPO)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
