#!/usr/bin/python3
"""Offline checks of server/openapi/openapi.json (no server needed).

- it is OpenAPI 3.1-shaped: every `$ref` resolves (and no cycle), every operation has an
  operationId (unique) and responses, every `{param}` of a path template is declared as a path
  parameter, every response has a description;
- every schema is a valid JSON Schema (draft 2020-12), and every example validates against the
  schema it illustrates;
- error codes: every code an error response allows is in `ErrorCode`, and every code the server's
  source answers with (`ApiError(...)`, `write_error(...)`, `error_response(...)`, `refuse(...)`,
  `RequestError{...}` in server/ and engine/) is in `ErrorCode`;
- routes: every literal route of server/routes.cc is a documented path, the operations are
  exactly routes.cc's route_table() with the same access level, and the routes of the
  multi-model API are all there;
- tests/http/openapi_contract.py: path matching, and that good answers pass and bad ones raise.

Usage: /usr/bin/python3 tests/http/test_openapi_document.py [--document PATH]
Exit status: 0 all passed, 1 any failure, 77 skipped (python3-jsonschema not installed).
"""

import argparse
import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import openapi_contract  # noqa: E402  (needs the path above)
from openapi_contract import METHODS, Contract, ContractUnavailable, iter_refs  # noqa: E402

# Every (METHOD, template) the API has (README "Routes" and the multi-model routes).
EXPECTED_OPERATIONS = {
    ("POST", "/recommend"), ("POST", "/iid_recommend"), ("POST", "/uid_recommend"), ("POST", "/recommend/batch"),
    ("POST", "/similar_items"),
    ("POST", "/models/{name}/recommend"), ("POST", "/models/{name}/recommend/batch"),
    ("POST", "/models/{name}/similar_items"),
    ("GET", "/model"), ("GET", "/models"), ("GET", "/models/{name}"),
    ("GET", "/users/{id}/interactions"), ("POST", "/users/{id}/interactions"), ("DELETE", "/users/{id}"),
    ("GET", "/users"), ("GET", "/items/{id}"), ("GET", "/items"),
    ("POST", "/admin/reload"), ("GET", "/admin/split"), ("POST", "/admin/split"),
    ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/openapi.json"),
    ("GET", "/"), ("GET", "/console"), ("GET", "/console/{file}"),
}
EXPECTED_CODES = {
    "overloaded", "unauthorized", "forbidden", "not_found", "method_not_allowed", "payload_too_large",
    "unsupported_encoding", "invalid_json", "invalid_request", "history_unavailable", "internal", "not_ready",
    "reload_failed", "item_not_found", "model_not_found", "bad_request",
}


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, label, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL {label}" + (f"\n     {detail}" if detail else ""))
        return ok


def source_error_codes():
    """Error codes the C++ sources answer with, found where they are written."""
    patterns = [
        r'ApiError\(\s*\d+\s*,\s*"([a-z_]+)"',
        r'write_error\(\s*"([a-z_]+)"',
        r'error_response\(\s*[\w:]+\s*,\s*"([a-z_]+)"',
        r'refuse\(\s*[\w:]+\s*,\s*"([a-z_]+)"',
        r'RequestError\{\s*"([a-z_]+)"',
        r'->error\(\s*[\w:]+\s*,\s*"([a-z_]+)"',
        r'"code":\s*"([a-z_]+)"',
    ]
    found = {}
    files = [f for d in ("server", "engine") for f in glob.glob(os.path.join(REPO, d, "**", "*.*"), recursive=True)
             if f.endswith((".cc", ".h"))]
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        for pattern in patterns:
            for match in re.finditer(pattern, text):
                found.setdefault(match.group(1), os.path.relpath(path, REPO))
    return found


def route_literals():
    """Paths server/routes.cc compares a request target with (`target == "/..."`)."""
    path = os.path.join(REPO, "server", "routes.cc")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return set(re.findall(r'target == "(/[^"]*)"', text))


def route_table():
    """server/routes.cc's route_table(): {(METHOD, template): access} (empty when it has none)."""
    path = os.path.join(REPO, "server", "routes.cc")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return {(m, p): a for m, p, a in re.findall(r'\{"(GET|POST|PUT|DELETE|PATCH)", "(/[^"]*)", "(open|read|admin)"', text)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--document", default=openapi_contract.DEFAULT_DOCUMENT)
    args = parser.parse_args()
    try:
        jsonschema = openapi_contract.jsonschema_module()
    except ContractUnavailable as error:
        print(f"SKIPPED: {error}")
        return 77

    r = Results()
    try:
        contract = Contract(args.document)
    except (OSError, ValueError) as error:
        print(f"FAIL cannot read {args.document}: {error}")
        print("0 passed, 1 failed")
        return 1
    doc = contract.document

    # ---- shape ---------------------------------------------------------------------------
    r.check(str(doc.get("openapi", "")).startswith("3.1"), "openapi is 3.1.x", f"found {doc.get('openapi')!r}")
    r.check(isinstance(doc.get("info"), dict) and doc["info"].get("title") and doc["info"].get("version"),
            "info has title and version")
    for ref, at in iter_refs(doc):
        try:
            contract.pointer(ref)
            ok, detail = True, ""
        except AssertionError as error:
            ok, detail = False, str(error)
        r.check(ok, f"$ref {ref} at {at} resolves", detail)
    try:
        contract.resolve(doc)
        r.check(True, "no $ref cycle")
    except AssertionError as error:
        r.check(False, "no $ref cycle", str(error))

    operation_ids = {}
    for template, item in doc.get("paths", {}).items():
        r.check(template.startswith("/"), f"path {template} starts with /")
        declared_path_params = set()
        for param in item.get("parameters", []):
            param = contract.resolve(param)
            if param.get("in") == "path":
                declared_path_params.add(param["name"])
        for method, op in item.items():
            if method not in METHODS:
                continue
            label = f"{method.upper()} {template}"
            op_params = {p["name"] for p in (contract.resolve(x) for x in op.get("parameters", [])) if p.get("in") == "path"}
            names = set(re.findall(r"\{([^}/]+)\}", template))
            r.check(names == declared_path_params | op_params, f"{label}: path parameters declared",
                    f"template has {sorted(names)}, declared {sorted(declared_path_params | op_params)}")
            op_id = op.get("operationId")
            r.check(bool(op_id) and op_id not in operation_ids, f"{label}: unique operationId",
                    f"{op_id!r} also on {operation_ids.get(op_id)}")
            operation_ids[op_id] = label
            responses = op.get("responses") or {}
            r.check(bool(responses), f"{label}: has responses")
            r.check(any(s.startswith("2") for s in responses), f"{label}: documents a 2xx answer")
            for status, response in responses.items():
                response = contract.resolve(response)
                r.check(bool(response.get("description")), f"{label} {status}: has a description")
                r.check(status == "default" or re.fullmatch(r"[1-5](\d\d|XX)", status) is not None,
                        f"{label}: status key {status!r} is valid")
            r.check(op.get("x-seqrec-access") in ("open", "read", "admin"), f"{label}: x-seqrec-access")

    # ---- schemas and examples ------------------------------------------------------------
    validator_class = jsonschema.Draft202012Validator

    def schema_ok(schema, label):
        try:
            validator_class.check_schema(contract.resolve(schema))
            return r.check(True, label)
        except jsonschema.exceptions.SchemaError as error:
            return r.check(False, label, error.message)

    def example_ok(schema, value, label):
        try:
            contract.check_schema_value(schema, value, label)
            r.check(True, label)
        except AssertionError as error:
            r.check(False, label, str(error))

    components = doc.get("components", {})
    for name, schema in components.get("schemas", {}).items():
        if schema_ok(schema, f"schema {name} is valid JSON Schema 2020-12"):
            for i, example in enumerate(schema.get("examples", [])):
                example_ok(schema, example, f"schema {name} example {i} validates")

    def media_types():
        for template, item in doc.get("paths", {}).items():
            for method, op in item.items():
                if method not in METHODS:
                    continue
                body = contract.resolve(op.get("requestBody", {}))
                for media, content in body.get("content", {}).items():
                    yield f"{method.upper()} {template} request {media}", content
                for status, response in op.get("responses", {}).items():
                    response = contract.resolve(response)
                    for media, content in response.get("content", {}).items():
                        yield f"{method.upper()} {template} {status} {media}", content

    for label, content in media_types():
        schema = content.get("schema")
        if schema is None:
            r.check(False, f"{label}: has a schema")
            continue
        schema_ok(schema, f"{label}: schema valid")
        if "example" in content:
            example_ok(schema, content["example"], f"{label}: example validates")
        for name, example in (content.get("examples") or {}).items():
            example = contract.resolve(example)
            if "value" in example:
                example_ok(schema, example["value"], f"{label}: example {name} validates")

    # ---- error codes ---------------------------------------------------------------------
    error_codes = set(contract.resolve(components.get("schemas", {}).get("ErrorCode", {})).get("enum", []))
    missing = EXPECTED_CODES - error_codes
    r.check(not missing, "ErrorCode has every code of the API", f"missing: {sorted(missing)}")
    for code, where in sorted(source_error_codes().items()):
        r.check(code in error_codes, f"error code {code!r} ({where}) is in ErrorCode")
    for name, response in components.get("responses", {}).items():
        text = json.dumps(contract.resolve(response))
        for enum in re.findall(r'"code": \{"enum": (\[[^\]]*\])', text):
            extra = set(json.loads(enum)) - error_codes
            r.check(not extra, f"response {name}: its codes are in ErrorCode", f"not in ErrorCode: {sorted(extra)}")

    # ---- routes --------------------------------------------------------------------------
    operations = contract.operations()
    missing_ops = EXPECTED_OPERATIONS - operations
    r.check(not missing_ops, "every route of the API is documented", f"missing: {sorted(missing_ops)}")
    table = route_table()
    if table:
        only_code = set(table) - operations
        only_doc = operations - set(table)
        r.check(not only_code and not only_doc, "the document's operations are routes.cc's route_table()",
                f"in route_table() only: {sorted(only_code)}; in the document only: {sorted(only_doc)}")
        for (method, template), access in sorted(table.items()):
            op = doc.get("paths", {}).get(template, {}).get(method.lower(), {})
            r.check(op.get("x-seqrec-access") == access, f"{method} {template}: access {access} as in routes.cc",
                    f"the document says {op.get('x-seqrec-access')!r}")
    for literal in sorted(route_literals()):
        try:
            contract.template_for(literal)
            r.check(True, f"routes.cc {literal} is documented")
        except AssertionError as error:
            r.check(False, f"routes.cc {literal} is documented", str(error))

    # ---- the contract checker itself -----------------------------------------------------
    for concrete, template in (("/users/abc/interactions", "/users/{id}/interactions"),
                               ("/users/a%2Fb/interactions?x=1", "/users/{id}/interactions"),
                               ("/users/abc", "/users/{id}"), ("/users?limit=5", "/users"),
                               ("/models/a/recommend", "/models/{name}/recommend"),
                               ("/models/a/recommend/batch", "/models/{name}/recommend/batch"),
                               ("/models/a", "/models/{name}"), ("/models", "/models"),
                               ("/items/260", "/items/{id}"), ("/console/console.js", "/console/{file}")):
        try:
            got = contract.template_for(concrete)
        except AssertionError as error:
            got = str(error)
        r.check(got == template, f"contract: {concrete} matches {template}", f"got {got}")

    def passes(label, *call, **kw):
        try:
            contract.validate(*call, **kw)
            r.check(True, label)
        except AssertionError as error:
            r.check(False, label, str(error))

    def raises(label, *call, **kw):
        try:
            contract.validate(*call, **kw)
            r.check(False, label, "no AssertionError")
        except AssertionError:
            r.check(True, label)

    good = json.dumps({"recommendations": [{"id": 1210, "score": 0.93}, {"id": "x1", "score": None}], "message": None})
    passes("contract: a good /recommend answer passes", "POST", "/recommend", 200, good, "application/json",
           headers={"X-Seqrec-Model": "default", "Content-Type": "application/json"})
    passes("contract: fields in recommendations pass", "POST", "/models/a/recommend", 200,
           json.dumps({"recommendations": [{"id": 260, "score": 0.5, "title": "Star Wars", "tags": ["Sci-Fi"],
                                            "year": "1977"}], "message": "note"}), "application/json")
    raises("contract: a missing X-Seqrec-Model raises", "POST", "/recommend", 200, good, "application/json",
           headers={"Content-Type": "application/json"})
    raises("contract: a missing score raises", "POST", "/recommend", 200,
           json.dumps({"recommendations": [{"id": 1}], "message": None}), "application/json")
    raises("contract: an extra top-level field raises", "POST", "/recommend", 200,
           json.dumps({"recommendations": [], "message": None, "extra": 1}), "application/json")
    raises("contract: a code the route does not answer raises", "POST", "/recommend", 404,
           json.dumps({"error": {"code": "item_not_found", "message": "m"}}), "application/json")
    passes("contract: a documented error passes", "POST", "/similar_items", 404,
           json.dumps({"error": {"code": "item_not_found", "message": "m"}}), "application/json")
    raises("contract: an undocumented status raises", "GET", "/healthz", 422, "{}", "application/json")
    raises("contract: an undocumented path raises", "GET", "/nope", 200, "{}", "application/json")
    passes("contract: 404 not_found for an unknown path passes", "GET", "/nope", 404,
           json.dumps({"error": {"code": "not_found", "message": "no route /nope"}}), "application/json")
    passes("contract: 405 for a method a route does not take passes", "GET", "/recommend", 405,
           json.dumps({"error": {"code": "method_not_allowed", "message": "m"}}), "application/json",
           headers={"Allow": "POST"})
    raises("contract: a body that is not JSON raises", "GET", "/model", 200, "not json", "application/json")
    raises("contract: an undocumented content type raises", "GET", "/model", 200, "{}", "text/html")
    passes("contract: HEAD is checked as GET without a body", "HEAD", "/healthz", 200, "", "application/json")
    passes("contract: /metrics text passes", "GET", "/metrics", 200, "seqrec_queue_depth 0\n",
           "text/plain; version=0.0.4")
    passes("contract: a console file passes", "GET", "/console/console.css", 200, "body{}",
           "text/css; charset=utf-8")

    print(f"{r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
