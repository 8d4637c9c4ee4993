"""The exceptions the client raises: one class per kind of failure a caller handles differently."""
from __future__ import annotations

import email.utils
import json
import time
from typing import Any, Mapping, Optional


class SeqrecError(Exception):
    """Base of every exception this package raises, so that callers can catch them all at once."""


class TransportError(SeqrecError, ConnectionError):
    """The server could not be reached or the connection failed before a whole answer came back."""


class RequestTimeout(TransportError, TimeoutError):
    """No (complete) answer within the client's timeout."""


class ProtocolError(SeqrecError):
    """The server answered 2xx with something this client cannot read (not the JSON it expects)."""


class ApiError(SeqrecError):
    """A non-2xx answer, or an error entry of a batch: the server's `{"error": {"code", "message"}}`.

    `status` is the HTTP status (for a batch entry: the status the same error has alone),
    `code` the server's machine-readable code (e.g. `invalid_request`), `message` its sentence.
    `retry_after` is the `Retry-After` header in seconds, when the server sent one.
    """

    def __init__(self, status: int, code: str, message: str, retry_after: Optional[float] = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, message={self.message!r})"

    def __reduce__(self) -> Any:  # picklable despite the custom __init__ (e.g. across processes)
        return (type(self), (self.status, self.code, self.message, self.retry_after))


class BadRequest(ApiError):
    """400 (and 413, 415): the request itself is wrong; sending it again will not help."""


class PayloadTooLarge(BadRequest):
    """413: the body is over the server's --max-body-bytes."""


class Unauthorized(ApiError):
    """401: no key, a wrong key, or a read key on a route that needs the admin key."""


class Forbidden(ApiError):
    """403: the key is right but the action is not allowed (e.g. a reload path outside --model-dir)."""


class NotFound(ApiError):
    """404: no such route, item or model."""


class Overloaded(ApiError):
    """503 (`overloaded`, `history_unavailable`, `not_ready`): temporary; retried for safe calls."""


_CLASS_BY_STATUS: Mapping[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 413: PayloadTooLarge, 415: BadRequest,
    503: Overloaded,
}

# A batch entry's error has a code but no HTTP status of its own: the status the same error
# gets as a whole request.
_STATUS_BY_CODE: Mapping[str, int] = {
    "invalid_json": 400, "invalid_request": 400, "bad_request": 400, "unauthorized": 401, "forbidden": 403,
    "not_found": 404, "item_not_found": 404, "model_not_found": 404, "payload_too_large": 413,
    "unsupported_encoding": 415, "reload_failed": 422, "internal": 500, "overloaded": 503,
    "history_unavailable": 503, "not_ready": 503,
}


def api_error(status: int, code: str, message: str, retry_after: Optional[float] = None) -> ApiError:
    """The ApiError subclass for `status` (ApiError itself for statuses without one)."""
    return _CLASS_BY_STATUS.get(status, ApiError)(status, code, message, retry_after)


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date); None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(status: int, body: bytes, retry_after_header: Optional[str] = None) -> ApiError:
    """The ApiError for a non-2xx answer; bodies other than the server's error JSON (a proxy's page) still give one."""
    code, message = f"http_{status}", ""
    try:
        parsed = json.loads(body.decode("utf-8"))
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            code = str(error.get("code", code))
            message = str(error.get("message", ""))
        else:
            message = body.decode("utf-8", "replace")[:500]
    except (UnicodeDecodeError, ValueError):
        message = body.decode("utf-8", "replace")[:500]
    return api_error(status, code, message, parse_retry_after(retry_after_header))


def error_from_entry(error: Mapping[str, Any]) -> ApiError:
    """The ApiError for one `{"code", "message"}` of a batch answer."""
    code = str(error.get("code", "error"))
    return api_error(_STATUS_BY_CODE.get(code, 400), code, str(error.get("message", "")))
