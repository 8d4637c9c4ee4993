"""The HTTP API's contract: answers checked against server/openapi/openapi.json.

    from openapi_contract import Contract, ContractUnavailable
    contract = Contract()                     # server/openapi/openapi.json of this checkout
    contract.validate("POST", "/users/a%2Fb/interactions", 200, body_text, "application/json")
    contract.operations()                     # {("GET", "/users/{id}/interactions"), ...}

`validate` finds the path template a concrete path matches (`/users/abc/interactions` →
`/users/{id}/interactions`, `/models/a/recommend` → `/models/{name}/recommend`), the operation
for the method (`HEAD` is checked as `GET` without a body, as the server answers it), the
response documented for the status (exact, then `4XX`-style, then `default`), the media type
for the content type, and, for JSON, validates the parsed body against the response's schema
with every `$ref` resolved. Any mismatch — an undocumented path, method, status or content
type, a body that does not parse or does not match, a required response header missing —
raises AssertionError with a message naming all of it.

Standard library plus python3-jsonschema (Debian package), imported only when a body is
validated: without it, `validate` raises ContractUnavailable (an ImportError), which callers
may catch to skip.
"""

import copy
import json
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DOCUMENT = os.path.join(os.path.dirname(os.path.dirname(HERE)), "server", "openapi", "openapi.json")

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class Undocumented(AssertionError):
    """A path, method or status the document does not have (`kind`: "path", "method", "status")."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class ContractUnavailable(ImportError):
    """python3-jsonschema is not installed: bodies cannot be validated (callers may skip)."""


_jsonschema_module = None


def jsonschema_module():
    """The jsonschema module, imported on first use; ContractUnavailable when missing."""
    global _jsonschema_module
    if _jsonschema_module is None:
        try:
            import jsonschema  # noqa: PLC0415 (lazy on purpose)
        except ImportError as error:
            raise ContractUnavailable(
                f"python3-jsonschema is not installed ({error}); apt-get install python3-jsonschema") from error
        if not hasattr(jsonschema, "Draft202012Validator"):
            raise ContractUnavailable("jsonschema too old: no Draft202012Validator (OpenAPI 3.1 needs draft 2020-12)")
        _jsonschema_module = jsonschema
    return _jsonschema_module


def available() -> bool:
    """Whether bodies can be validated here (python3-jsonschema importable)."""
    try:
        jsonschema_module()
        return True
    except ContractUnavailable:
        return False


def _shorten(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _media_base(content_type: Optional[str]) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


class Contract:
    """The OpenAPI document of `seqrec serve`, as a checker of answers."""

    def __init__(self, path: str = DEFAULT_DOCUMENT):
        self.path = path
        with open(path, encoding="utf-8") as f:
            self.document: Dict[str, Any] = json.load(f)
        self._resolved: Dict[str, Any] = {}
        # (regex, template, literal characters): the most literal template wins a tie.
        self._templates: List[Tuple["re.Pattern[str]", str, int]] = []
        for template in self.document.get("paths", {}):
            pattern = "".join(
                "(?P<p%d>[^/]+)" % i if part.startswith("{") else re.escape(part)
                for i, part in enumerate(re.split(r"(\{[^}/]+\})", template)) if part)
            literal = len(re.sub(r"\{[^}/]+\}", "", template))
            self._templates.append((re.compile("^" + pattern + "$"), template, literal))
        self._templates.sort(key=lambda entry: -entry[2])

    # ---- the document ----------------------------------------------------------------------

    def operations(self) -> Set[Tuple[str, str]]:
        """Every documented (METHOD, path template)."""
        return {(method.upper(), template)
                for template, item in self.document.get("paths", {}).items()
                for method in item if method in METHODS}

    def pointer(self, ref: str) -> Any:
        """The node a local `$ref` ("#/components/...") names; AssertionError when it does not resolve."""
        if not ref.startswith("#"):
            raise AssertionError(f"{self.path}: only local $refs are supported, found {ref!r}")
        node: Any = self.document
        for raw in ref[1:].split("/")[1:]:
            key = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, list):
                try:
                    node = node[int(key)]
                except (ValueError, IndexError):
                    raise AssertionError(f"{self.path}: $ref {ref!r} does not resolve (at {key!r})") from None
            elif isinstance(node, dict) and key in node:
                node = node[key]
            else:
                raise AssertionError(f"{self.path}: $ref {ref!r} does not resolve (at {key!r})")
        return node

    def resolve(self, node: Any, _seen: Tuple[str, ...] = ()) -> Any:
        """`node` with every local `$ref` replaced by what it names (siblings of a $ref kept via allOf)."""
        if isinstance(node, list):
            return [self.resolve(item, _seen) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node and isinstance(node["$ref"], str):
            ref = node["$ref"]
            if ref in _seen:
                raise AssertionError(f"{self.path}: $ref cycle through {' -> '.join(_seen + (ref,))}")
            if ref not in self._resolved:
                self._resolved[ref] = self.resolve(self.pointer(ref), _seen + (ref,))
            target = copy.deepcopy(self._resolved[ref])
            rest = {k: self.resolve(v, _seen) for k, v in node.items() if k != "$ref"}
            if not rest:
                return target
            # OpenAPI 3.1: summary/description beside a $ref override the target's.
            if set(rest) <= {"summary", "description"} and isinstance(target, dict):
                target.update(rest)
                return target
            return {"allOf": [target, rest]}
        return {k: self.resolve(v, _seen) for k, v in node.items()}

    # ---- matching ------------------------------------------------------------------------

    def template_for(self, path: str) -> str:
        """The path template a concrete path (query string allowed) matches; AssertionError when none does."""
        bare = path.split("?", 1)[0].split("#", 1)[0]
        for regex, template, _ in self._templates:
            if regex.match(bare):
                return template
        raise Undocumented("path", f"undocumented path {bare!r}: no template of {os.path.basename(self.path)} "
                                   "matches it")

    def operation(self, method: str, path: str) -> Tuple[str, str, Dict[str, Any]]:
        """(METHOD as checked, template, the resolved operation object)."""
        template = self.template_for(path)
        item = self.document["paths"][template]
        wanted = method.lower()
        if wanted == "head" and "head" not in item and "get" in item:
            wanted = "get"  # HEAD is answered on every GET route: same headers, no body
        if wanted not in item:
            documented = sorted(m.upper() for m in item if m in METHODS)
            raise Undocumented("method", f"undocumented method {method.upper()} {path!r} (template {template}; "
                                         f"documented: {', '.join(documented)})")
        return wanted.upper(), template, self.resolve(item[wanted])

    def response(self, method: str, path: str, status: int) -> Tuple[str, Dict[str, Any]]:
        """(template, the resolved response object documented for the status)."""
        checked, template, op = self.operation(method, path)
        responses = op.get("responses") or {}
        for key in (str(status), f"{str(status)[0]}XX", "default"):
            if key in responses:
                return template, responses[key]
        raise Undocumented("status", f"undocumented status {status} for {checked} {template} (path {path!r}; "
                                     f"documented: {', '.join(sorted(responses))})")

    # ---- checking an answer ----------------------------------------------------------------

    def validate(self, method: str, path: str, status: int, body_text: Any, content_type: Optional[str] = None,
                 headers: Optional[Mapping[str, str]] = None) -> Any:
        """Checks one answer; returns the parsed JSON body (or None). AssertionError on any mismatch.

        `body_text`: the answer's body (str or bytes). `content_type`: its Content-Type header (None:
        the documented one when there is exactly one). `headers`: the answer's headers, to check the
        ones the document marks required (optional).
        """
        if isinstance(body_text, (bytes, bytearray)):
            body_text = bytes(body_text).decode("utf-8", "replace")
        body_text = body_text or ""
        where = f"{method.upper()} {path} -> {status}"
        try:
            template, response = self.response(method, path, status)
        except Undocumented as undocumented:
            # The server's own answers to what is not a route: 404 `not_found` for an unknown path,
            # 405 `method_not_allowed` for a method a route does not take. Anything else is a miss.
            # (/models/NAME/... with an unknown NAME is `model_not_found` whatever follows.)
            codes = {("path", 404): ["not_found", "model_not_found"],
                     ("method", 405): ["method_not_allowed"]}.get((undocumented.kind, status))
            if codes is None or "Error" not in self.document.get("components", {}).get("schemas", {}):
                raise
            template = "(no route)"
            response = {"description": "the server's answer to what is not a route", "content": {
                "application/json": {"schema": {"allOf": [
                    self.resolve({"$ref": "#/components/schemas/Error"}),
                    {"properties": {"error": {"properties": {"code": {"enum": codes}}}}}]}}}}
            if status == 405:
                response["headers"] = {"Allow": {"required": True, "schema": {"type": "string"}}}
        where += f" (documented as {template})"

        if headers is not None:
            lowered = {k.lower(): v for k, v in headers.items()}
            for name, header in (response.get("headers") or {}).items():
                if header.get("required") and name.lower() not in lowered:
                    raise AssertionError(f"{where}: required response header {name} missing "
                                         f"(got {', '.join(sorted(headers)) or 'none'})")

        content = response.get("content") or {}
        if method.upper() == "HEAD":
            return None  # no body to check
        if not content:
            if body_text.strip():
                raise AssertionError(f"{where}: documented without a body, got {_shorten(body_text)!r}")
            return None
        media = _media_base(content_type)
        by_base = {_media_base(key): value for key, value in content.items()}
        if not media:
            if len(by_base) != 1:
                raise AssertionError(f"{where}: no Content-Type given and several are documented: "
                                     f"{', '.join(content)}")
            media = next(iter(by_base))
        if media not in by_base:
            raise AssertionError(f"{where}: undocumented Content-Type {content_type!r} "
                                 f"(documented: {', '.join(content)})")
        schema = by_base[media].get("schema")
        if not _is_json(media):
            return None  # text, HTML, scripts: the media type is the contract
        try:
            parsed = json.loads(body_text)
        except ValueError as error:
            raise AssertionError(f"{where}: the body is not JSON ({error}): {_shorten(body_text)!r}") from None
        if schema is not None:
            self.check_schema_value(schema, parsed, where, body_text)
        return parsed

    def check_schema_value(self, schema: Any, value: Any, where: str = "value", body_text: Optional[str] = None):
        """Validates `value` against a (resolved) schema; AssertionError listing every mismatch."""
        jsonschema = jsonschema_module()
        validator_class = jsonschema.Draft202012Validator
        validator = validator_class(self.resolve(schema), format_checker=jsonschema.FormatChecker())
        errors = sorted(validator.iter_errors(value), key=lambda e: (len(list(e.absolute_path)), str(e.message)))
        if errors:
            lines = []
            for error in errors[:8]:
                at = "".join(f"[{p!r}]" for p in error.absolute_path) or "(top level)"
                lines.append(f"  at {at}: {_shorten(error.message, 300)}")
                # A oneOf/anyOf failure: its closest branch says more.
                for sub in sorted(error.context or [], key=lambda e: len(list(e.absolute_path)))[-2:]:
                    sub_at = "".join(f"[{p!r}]" for p in sub.absolute_path) or "(top level)"
                    lines.append(f"    branch at {sub_at}: {_shorten(sub.message, 200)}")
            more = f"\n  ... and {len(errors) - 8} more" if len(errors) > 8 else ""
            shown = body_text if body_text is not None else json.dumps(value)
            raise AssertionError(f"{where}: does not match the documented schema:\n" + "\n".join(lines) + more +
                                 f"\n  body: {_shorten(shown)}")


def iter_refs(node: Any, at: str = "#") -> Iterable[Tuple[str, str]]:
    """Every ($ref value, where it is) in a document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value, at
            else:
                yield from iter_refs(value, f"{at}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from iter_refs(value, f"{at}/{i}")
