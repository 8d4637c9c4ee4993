"""`Client`: every route of `seqrec serve` as a method, over keep-alive connections, with retries.

Retries: 503 answers and failed connections are retried, with exponential backoff and jitter
(or the server's `Retry-After`), for the calls that are safe to repeat: reads, recommendations
(they change nothing) and setting a split. Appends, deletes and reloads are not, since a
repeat after a lost answer would append twice or report a different outcome, unless
`retry_writes=True`; they are still re-sent when the connection could not even be opened,
because then the server never saw them. A call takes at most `timeout * (retries + 1)` seconds.
"""
from __future__ import annotations

import http.client
import json
import random
import select
import socket
import threading
import time
import urllib.parse
import weakref
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Union

from .errors import (
    ApiError, ProtocolError, RequestTimeout, TransportError, error_from_entry, error_from_response,
)
from .schema import (
    Interaction, InteractionsLike, ItemId, JsonObject, Recommendations, RecommendRequest, UserId,
    interactions_json,
)

__all__ = ["Client", "DEFAULT_URL"]

DEFAULT_URL = "http://127.0.0.1:8080"
_USER_AGENT = "seqrec-client-python/0.1.0"

# Which key a route needs: none (probes), the read key (or the admin key), or the admin key.
_OPEN, _READ, _ADMIN = "open", "read", "admin"
# When a call is retried: never (probes report the present), always when it fails in a way
# retries can help (safe calls), or only if the client says so or the server never saw it (writes).
_NEVER, _SAFE, _WRITE = "never", "safe", "write"


class _NotSent(TransportError):
    """The connection could not be opened: the server never saw the request, so any call may be re-sent."""


class _ConnectTimeout(_NotSent, RequestTimeout):
    """Opening the connection timed out (the request was not sent)."""


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name)

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ProtocolError(f"expected JSON, got {self.body[:200]!r}") from e

    def json_object(self) -> JsonObject:
        value = self.json()
        if not isinstance(value, dict):
            raise ProtocolError(f"expected a JSON object, got {self.body[:200]!r}")
        return value

    def field(self, name: str) -> Any:
        """A field of the JSON answer that the route always has (ProtocolError when it does not)."""
        value = self.json_object()
        if name not in value:
            raise ProtocolError(f"expected a field {name!r} in {self.body[:200]!r}")
        return value[name]

    def recommendations(self) -> Recommendations:
        try:
            return Recommendations.from_json(self.json_object(), self.header("X-Seqrec-Model"))
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"not a list of scored items: {self.body[:200]!r}") from e


def _segment(value: Union[str, int]) -> str:
    """One path segment: every reserved byte escaped, so that an id like 'a/b' stays one segment."""
    return urllib.parse.quote(str(value), safe="")


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection was closed by the server (readable when idle = EOF)."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class Client:
    """A client of one `seqrec serve` (or a load balancer in front of replicas).

    `api_key` is sent on write and admin routes (and on reads when there is no `read_key`);
    `read_key` on reads, for servers run with `--protect-reads`. `timeout` bounds each attempt
    in seconds; `retries` is how many more attempts a retried call may make; `backoff` the first
    wait in seconds, doubled each time. Safe to share between threads: each thread keeps its own
    connection.
    """

    retry_statuses: FrozenSet[int] = frozenset({503})

    def __init__(self, base_url: str = DEFAULT_URL, api_key: Optional[str] = None, read_key: Optional[str] = None,
                 timeout: float = 10.0, retries: int = 3, backoff: float = 0.2, *, retry_writes: bool = False,
                 user_agent: str = _USER_AGENT) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be http://HOST[:PORT][/PREFIX] or https://..., not {base_url!r}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("timeout must be > 0, retries and backoff >= 0")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._base_url = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{self._prefix}"  # never credentials
        self._api_key = api_key
        self._read_key = read_key
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.retry_writes = retry_writes
        self._user_agent = user_agent
        self._local = threading.local()
        # Every thread's connection, for close(); weak, so that a finished thread's goes with it.
        self._connections: "weakref.WeakSet[http.client.HTTPConnection]" = weakref.WeakSet()
        self._connections_lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return self._base_url

    def __repr__(self) -> str:  # never the keys
        return f"Client({self._base_url!r})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes every thread's connection; the client stays usable (it reconnects on the next call)."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close()

    # ---- recommendations ----------------------------------------------------------------

    def recommend(self, user_interactions: Optional[InteractionsLike] = None, *, user_id: Optional[UserId] = None,
                  k: int = 10, recommend_seen: bool = False, candidate_ids: Optional[Sequence[ItemId]] = None,
                  exclude_ids: Optional[Sequence[ItemId]] = None, now: Optional[int] = None,
                  model: Optional[str] = None, routing_key: Optional[str] = None,
                  filter: Optional[Mapping[str, Any]] = None,  # noqa: A002 (the API's name)
                  fields: Optional[Sequence[str]] = None) -> Recommendations:
        """The top `k` items for a history given inline (`user_interactions`) or stored (`user_id`)."""
        request = RecommendRequest(user_interactions, user_id, k, recommend_seen, candidate_ids, exclude_ids, now,
                                   model, routing_key, filter, fields)
        return self._call("POST", "/recommend", request.to_json(), access=_READ, retry=_SAFE).recommendations()

    def recommend_batch(
            self, requests: Sequence[Union[RecommendRequest, Mapping[str, Any]]],
    ) -> List[Union[Recommendations, ApiError]]:
        """Many requests in one round trip, answered in order; an entry the server refused is an ApiError in the list."""
        bodies = [r.to_json() if isinstance(r, RecommendRequest) else dict(r) for r in requests]
        answer = self._call("POST", "/recommend/batch", {"requests": bodies}, access=_READ, retry=_SAFE)
        results = answer.field("results")
        if not isinstance(results, list) or len(results) != len(bodies):
            raise ProtocolError(f"expected {len(bodies)} results, got {answer.body[:200]!r}")
        model = answer.header("X-Seqrec-Model")
        out: List[Union[Recommendations, ApiError]] = []
        for result in results:
            if not isinstance(result, dict):
                raise ProtocolError(f"a batch result is not an object: {result!r}")
            if isinstance(result.get("error"), dict):
                out.append(error_from_entry(result["error"]))
                continue
            try:
                out.append(Recommendations.from_json(result, model))
            except (KeyError, TypeError, ValueError) as e:
                raise ProtocolError(f"a batch result is not a list of scored items: {result!r}") from e
        return out

    def similar_items(self, item_id: ItemId, k: int = 10, candidate_ids: Optional[Sequence[ItemId]] = None,
                      exclude_ids: Optional[Sequence[ItemId]] = None,
                      filter: Optional[Mapping[str, Any]] = None,  # noqa: A002 (the API's name)
                      fields: Optional[Sequence[str]] = None, model: Optional[str] = None) -> Recommendations:
        """The `k` items most like `item_id` (by the model's item representations)."""
        body: JsonObject = {"item_id": item_id, "k": k}
        optional: Dict[str, Any] = {
            "candidate_ids": None if candidate_ids is None else list(candidate_ids),
            "exclude_ids": None if exclude_ids is None else list(exclude_ids),
            "filter": None if filter is None else dict(filter),
            "fields": None if fields is None else list(fields), "model": model,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        return self._call("POST", "/similar_items", body, access=_READ, retry=_SAFE).recommendations()

    # ---- catalog and models -------------------------------------------------------------

    def item(self, item_id: ItemId) -> JsonObject:
        """One item's metadata (GET /items/{id})."""
        return self._call("GET", f"/items/{_segment(item_id)}", access=_READ, retry=_SAFE).json_object()

    def models(self) -> List[JsonObject]:
        """The models the server holds (GET /models)."""
        listed = self._call("GET", "/models", access=_READ, retry=_SAFE).json()
        if isinstance(listed, dict):
            listed = listed.get("models")
        if not isinstance(listed, list):
            raise ProtocolError(f"expected a list of models, got {listed!r}")
        return [m if isinstance(m, dict) else {"name": m} for m in listed]

    def model_info(self, name: Optional[str] = None) -> JsonObject:
        """The description of the default model (GET /model), or of the model `name` (GET /models/{name})."""
        path = "/model" if name is None else f"/models/{_segment(name)}"
        return self._call("GET", path, access=_READ, retry=_SAFE).json_object()

    def split(self) -> JsonObject:
        """The traffic split between models (GET /admin/split)."""
        return self._call("GET", "/admin/split", access=_ADMIN, retry=_SAFE).json_object()

    def set_split(self, weights: Optional[Mapping[str, float]]) -> JsonObject:
        """Sets the traffic split (model name -> weight; None: no split). Idempotent, so retried."""
        body = {"weights": None if weights is None else dict(weights)}
        return self._call("POST", "/admin/split", body, access=_ADMIN, retry=_SAFE).json_object()

    # ---- histories ----------------------------------------------------------------------

    def append(self, user_id: UserId, interactions: InteractionsLike) -> int:
        """Appends to a user's stored history; returns how many were appended (acknowledged once durable)."""
        body = {"user_interactions": interactions_json(interactions)}
        answer = self._call("POST", f"/users/{_segment(user_id)}/interactions", body, access=_ADMIN, retry=_WRITE)
        return int(answer.field("appended"))

    def history(self, user_id: UserId) -> List[Interaction]:
        """A user's stored history, oldest first (empty for an unknown user)."""
        answer = self._call("GET", f"/users/{_segment(user_id)}/interactions", access=_READ, retry=_SAFE)
        listed = answer.field("interactions")
        try:
            return [Interaction.from_json(x) for x in listed]
        except (KeyError, TypeError, AttributeError) as e:
            raise ProtocolError(f"not a list of interactions: {answer.body[:200]!r}") from e

    def delete_user(self, user_id: UserId) -> bool:
        """Erases a user's history (and its share of the popularity counts); False when there was none."""
        answer = self._call("DELETE", f"/users/{_segment(user_id)}", access=_ADMIN, retry=_WRITE)
        return bool(answer.field("deleted"))

    # ---- admin and probes ---------------------------------------------------------------

    def reload(self, path: Optional[str] = None, model: Optional[str] = None) -> JsonObject:
        """Reloads the model file (or loads `path`, inside the server's --model-dir); the old one serves meanwhile."""
        body: Optional[JsonObject] = {k: v for k, v in (("path", path), ("model", model)) if v is not None} or None
        return self._call("POST", "/admin/reload", body, access=_ADMIN, retry=_WRITE).json_object()

    def health(self) -> bool:
        """Whether the process answers /healthz with 200 (one attempt: a probe reports the present)."""
        try:
            answer = self._call("GET", "/healthz", access=_OPEN, retry=_NEVER, raise_for_status=False)
        except TransportError:
            return False
        return answer.status == 200

    def ready(self) -> JsonObject:
        """/readyz's answer when ready; Overloaded (code `not_ready`) when not. One attempt, as a probe."""
        return self._call("GET", "/readyz", access=_OPEN, retry=_NEVER).json_object()

    def metrics(self) -> str:
        """The Prometheus text of /metrics."""
        return self._call("GET", "/metrics", access=_READ, retry=_SAFE).body.decode("utf-8", "replace")

    # ---- transport ----------------------------------------------------------------------

    def _headers(self, access: str, has_body: bool) -> Dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        if has_body:
            headers["Content-Type"] = "application/json"
        key = self._api_key if access == _ADMIN else (self._read_key or self._api_key) if access == _READ else None
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _call(self, method: str, path: str, body: Optional[Any] = None, *, access: str, retry: str,
              raise_for_status: bool = True) -> _Answer:
        """One API call: retried as the module docstring says, raising ApiError for non-2xx answers."""
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = self._headers(access, data is not None)
        if data is None and method == "POST":
            data = b""  # Content-Length: 0 (an empty reload body means "the same file")
        target = self._prefix + path
        retried = retry == _SAFE or (retry == _WRITE and self.retry_writes)
        attempts = 1 if retry == _NEVER else self.retries + 1
        started = time.monotonic()
        deadline = started + self.timeout * (self.retries + 1)
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            last: Exception
            try:
                answer = self._send(method, target, data, headers, min(self.timeout, max(remaining, 0.001)))
            except TransportError as e:
                if attempt + 1 >= attempts or not (retried or isinstance(e, _NotSent)):
                    raise
                last, wait = e, self._backoff_delay(attempt)
            else:
                if 200 <= answer.status < 300 or not raise_for_status:
                    return answer
                error = error_from_response(answer.status, answer.body, answer.header("Retry-After"))
                if attempt + 1 >= attempts or not retried or answer.status not in self.retry_statuses:
                    raise error
                last = error
                wait = error.retry_after if error.retry_after is not None else self._backoff_delay(attempt)
            if time.monotonic() + wait >= deadline:
                raise last  # no time left for another attempt within timeout * (retries + 1)
            time.sleep(wait)
            attempt += 1

    def _backoff_delay(self, attempt: int) -> float:
        """backoff * 2^attempt, half of it random (so that many clients do not retry in step)."""
        delay: float = self.backoff * 2.0 ** attempt
        return delay / 2 + random.uniform(0, delay / 2)

    def _connection(self) -> http.client.HTTPConnection:
        connection: Optional[http.client.HTTPConnection] = getattr(self._local, "connection", None)
        if connection is None:
            if self._https:
                connection = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout)
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
            self._local.connection = connection
            with self._connections_lock:
                self._connections.add(connection)
        return connection

    def _send(self, method: str, target: str, data: Optional[bytes], headers: Mapping[str, str],
              timeout: float) -> _Answer:
        """One attempt on this thread's connection, reconnecting first when the server closed it while idle."""
        connection = self._connection()
        if _dropped(connection):
            connection.close()
        connection.timeout = timeout
        what = f"{method} {self._base_url}{target[len(self._prefix):]}"
        if connection.sock is None:
            try:
                connection.connect()
            except (socket.timeout, TimeoutError) as e:
                connection.close()
                raise _ConnectTimeout(f"{what}: connecting timed out after {timeout:.3g} s") from e
            except OSError as e:
                connection.close()
                raise _NotSent(f"{what}: cannot connect: {e}") from e
        else:
            connection.sock.settimeout(timeout)
        try:
            try:
                connection.request(method, target, body=data, headers=dict(headers))
            except (BrokenPipeError, ConnectionResetError) as e:
                # The server may have answered from the headers alone (413, 401) and closed
                # while the body was still going out: that answer is the one to report.
                try:
                    response = connection.getresponse()
                except (OSError, http.client.HTTPException):
                    raise e from None
            else:
                response = connection.getresponse()
            body = response.read()
        except (socket.timeout, TimeoutError) as e:
            connection.close()
            raise RequestTimeout(f"{what}: no answer within {timeout:.3g} s") from e
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            raise TransportError(f"{what}: {type(e).__name__}: {e}") from e
        if response.will_close:
            connection.close()
        return _Answer(response.status, response.headers, body)
