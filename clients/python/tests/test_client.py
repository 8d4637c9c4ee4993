#!/usr/bin/env python3
"""Tests of seqrec_client against a live `seqrec serve` it starts (memory store, an admin key
file; and a second server with --protect-reads and a read key), plus a scripted stdlib HTTP
stub for what a healthy server does not do on demand: 503s, Retry-After, slow answers, idle
connections closed, non-JSON bodies, and the wire format of routes the server may not have yet.
Routes a server answers with 404 "no route" are reported as skipped. Standard library only.

usage: test_client.py --seqrec build/seqrec --workdir DIR [--only NAME]
Exit 77 when the binary or the bundled example checkpoint is missing.
"""
import argparse
import glob
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_ROOT = os.path.dirname(HERE)
ROOT = os.path.dirname(os.path.dirname(PACKAGE_ROOT))
sys.path.insert(0, os.path.join(PACKAGE_ROOT, "src"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import seqrec_client as sc  # noqa: E402  (from the source tree, no install needed)
from harness import EXAMPLE, Failure, Skip, check, free_port, item_ids, stop_process  # noqa: E402  (the repo's test helpers)

ADMIN_KEY, READ_KEY = "admin-s3cret", "read-s3cret"
NOT_YET = "skipped: route not in this server yet"


def interactions_of(ids, start=1000, rating=4.5):
    return [{"item_id": i, "timestamp": start + n, "rating": rating} for n, i in enumerate(ids)]


def route_missing(error):
    """A server without the route: 404 not_found "no route ..." (or 401 first when reads are protected)."""
    return isinstance(error, sc.NotFound) and error.code == "not_found" and "no route" in error.message


def field_missing(error):
    return isinstance(error, sc.BadRequest) and "unknown field" in error.message


def raises(exception_type, call, *args, **kwargs):
    """Runs call and returns the exception it must raise."""
    try:
        call(*args, **kwargs)
    except exception_type as e:
        return e
    raise Failure(f"{getattr(call, '__name__', call)} must raise {exception_type.__name__}")


class Server:
    """One `seqrec serve` process on a free port (as tests/http/test_http.py starts it)."""

    def __init__(self, binary, model, workdir, *extra, port=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(workdir, f"serve-{self.port}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--model", model, "--history", "memory", "--port", str(self.port), "--threads", "2",
             *extra], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            check(self.proc.poll() is None, f"seqrec serve exited early:\n{self.read_log()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                time.sleep(0.05)
        raise Failure(f"seqrec serve did not come up:\n{self.read_log()}")

    def read_log(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()[-3000:]

    def raw_post(self, path, body):
        """The answer without the client under test, to compare with."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json",
                                                          "Authorization": f"Bearer {ADMIN_KEY}"})
            res = conn.getresponse()
            return res.status, json.loads(res.read()), res.getheader("X-Seqrec-Model")
        finally:
            conn.close()

    def stop(self):
        stop_process(self.proc)
        self.log.close()


class Stub:
    """A scripted HTTP/1.1 server: each request gets the next scripted (status, headers, body), then `default`.

    Records every request (method, path, headers, body) and each connection's client address.
    `delay` holds every answer back; `silent_close` closes the connection after each answer
    without saying so (as a server does with an idle keep-alive connection).
    """

    def __init__(self, script=(), default=(200, {}, {}), delay=0.0, silent_close=False, port=0):
        self.script = list(script)
        self.default = default
        self.delay = delay
        self.requests = []
        self.clients = set()
        self.lock = threading.Lock()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with stub.lock:
                    stub.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                          "body": json.loads(body) if body else None})
                    stub.clients.add(self.client_address)
                    status, headers, payload = stub.script.pop(0) if stub.script else stub.default
                if stub.delay:
                    time.sleep(stub.delay)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    if not any(k.lower() == "content-type" for k in headers):
                        self.send_header("Content-Type", "application/json")
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except OSError:
                    pass  # the client gave up (timeout tests)
                if silent_close:
                    self.close_connection = True

            do_GET = do_POST = do_DELETE = do_HEAD = handle_one

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def overloaded(retry_after=None):
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return 503, headers, {"error": {"code": "overloaded", "message": "the inference queue is full; retry shortly"}}


OK_RECOMMENDATION = (200, {"X-Seqrec-Model": "m1"}, {"recommendations": [{"id": 7, "score": 0.5}], "message": None})


class Context:
    def __init__(self, args, workdir):
        self.binary = os.path.abspath(args.seqrec)
        self.workdir = workdir
        self.model_dir = os.path.join(workdir, "models")
        self.model = os.path.join(self.model_dir, "movielens.seqrec")
        self.admin_file = os.path.join(workdir, "admin-key")
        self.read_file = os.path.join(workdir, "read-key")
        with open(self.admin_file, "w") as f:
            f.write(ADMIN_KEY + "\n")
        with open(self.read_file, "w") as f:
            f.write(READ_KEY + "\n")
        self._server = None
        self._protected = None

    @property
    def server(self):
        """The shared server: memory store, admin key, a small body limit (for 413)."""
        if self._server is None:
            self._server = Server(self.binary, self.model, self.workdir, "--api-key-file", self.admin_file,
                                  "--max-body-bytes", "65536")
        return self._server

    @property
    def protected(self):
        """The server run with --protect-reads, an admin key and a read key."""
        if self._protected is None:
            self._protected = Server(self.binary, self.model, self.workdir, "--api-key-file", self.admin_file,
                                     "--read-key-file", self.read_file, "--protect-reads")
        return self._protected

    def client(self, **kwargs):
        kwargs.setdefault("api_key", ADMIN_KEY)
        return sc.Client(self.server.url, **kwargs)

    def stop(self):
        for server in (self._server, self._protected):
            if server:
                server.stop()


# ---- against a live seqrec serve ------------------------------------------------------------

def test_probes_metrics_and_model(ctx):
    client = ctx.client()
    check(client.health() is True, "health() on a live server")
    ready = client.ready()
    check(ready.get("model") == "loaded" and ready.get("history") == "ok", ready)
    client.recommend([], k=2)
    text = client.metrics()
    check(isinstance(text, str) and 'seqrec_http_requests_total{route="/recommend",status="200"}' in text, text[:500])
    info = client.model_info()
    check(info["catalog_size"] == len(item_ids()) and info["source"] == "pmixer", info)
    check(sc.Client(f"http://127.0.0.1:{free_port()}", timeout=1).health() is False, "health() of nothing: False")


def test_recommend_forms_match_raw_http(ctx):
    ids = item_ids()
    history = interactions_of(ids[20:26])
    status, expected, header_model = ctx.server.raw_post("/recommend", {"user_interactions": history, "k": 7})
    check(status == 200, expected)
    as_tuples = [(h["item_id"], h["timestamp"], h["rating"]) for h in history]
    as_dataclasses = [sc.Interaction(h["item_id"], h["timestamp"], h["rating"]) for h in history]
    as_object = {h["item_id"]: {"timestamp": h["timestamp"], "rating": h["rating"]} for h in history}
    with ctx.client() as client:
        for form in (history, as_tuples, as_dataclasses, as_object):
            got = client.recommend(form, k=7)
            check(isinstance(got, sc.Recommendations) and len(got) == 7, got)
            check([{"id": r.id, "score": r.score} for r in got.items] == expected["recommendations"],
                  f"{type(form[0] if isinstance(form, list) else form).__name__} form:\n{got}\nvs\n{expected}")
            check(got.message == expected["message"] and got.ids == [r["id"] for r in expected["recommendations"]],
                  got)
            check(got.model == header_model, f"model from X-Seqrec-Model ({header_model!r}): {got.model!r}")
            check(all(isinstance(r.score, float) and r.extra == {} for r in got), got)
        cold = client.recommend([], k=3)
        check(len(cold) == 3 and cold.message, f"an empty history gets the cold-start answer: {cold}")
        unknown = client.recommend([("no-such-item", 1, 5.0)], k=3)
        check("no-such-item" in (unknown.message or ""), f"unknown ids are named in the message: {unknown}")


def test_recommend_options(ctx):
    ids = item_ids()
    history = interactions_of(ids[:5])
    with ctx.client() as client:
        candidates = ids[100:130]
        got = client.recommend(history, k=5, candidate_ids=candidates)
        check(len(got) == 5 and all(str(i) in candidates for i in got.ids), f"candidate_ids: {got}")
        top = client.recommend(history, k=3)
        excluded = client.recommend(history, k=3, exclude_ids=[str(top.ids[0])])
        check(top.ids[0] not in excluded.ids, f"exclude_ids: {excluded}")
        seen = client.recommend(history, k=50, recommend_seen=True, candidate_ids=ids[:5])
        check(sorted(map(str, seen.ids)) == sorted(ids[:5]), f"recommend_seen: {seen}")
        not_seen = client.recommend(history, k=5, candidate_ids=ids[:5])
        check(len(not_seen) == 0, f"seen items are not recommended by default: {not_seen}")
        check(len(client.recommend(history, k=4, now=1_700_000_000)) == 4, "now is accepted")


def test_history_round_trip(ctx):
    ids = item_ids()
    history = interactions_of(ids[30:36])
    with ctx.client() as client:
        check(client.append("alice", history[:4]) == 4, "append returns the count")
        check(client.append("alice", [(h["item_id"], h["timestamp"], h["rating"]) for h in history[4:]]) == 2, "")
        stored = client.history("alice")
        check(all(isinstance(x, sc.Interaction) for x in stored), stored)
        check([str(x.item_id) for x in stored] == [h["item_id"] for h in history], f"oldest first: {stored}")
        check([x.timestamp for x in stored] == [h["timestamp"] for h in history], stored)
        by_id = client.recommend(user_id="alice", k=8)
        inline = client.recommend(history, k=8)
        check(by_id.items == inline.items, "user_id answers as the same history inline")
        check(client.delete_user("alice") is True and client.history("alice") == [], "deleted")
        check(client.delete_user("alice") is False, "a second delete finds nothing")
        check(client.recommend(user_id=12345, k=2).message, "an unknown (integer) user gets the cold start")
        for user in ("a/b c", "été", "100%", "?x#y&z=1", "..", "+plus"):
            check(client.append(user, [sc.Interaction(ids[1], 5)]) == 1, user)
            stored = client.history(user)
            check(len(stored) == 1 and str(stored[0].item_id) == ids[1], f"{user!r}: {stored}")
            check(client.delete_user(user) is True, f"{user!r} is one user, percent-encoded in the path")


def test_batch(ctx):
    ids = item_ids()
    good = sc.RecommendRequest(user_interactions=interactions_of(ids[:3]), k=4)
    with ctx.client() as client:
        expected = client.recommend(interactions_of(ids[:3]), k=4)
        results = client.recommend_batch([good, {"k": 0, "user_interactions": []}, {"user_id": "nobody", "k": 2},
                                          sc.RecommendRequest(user_id="nobody", k=1), good.to_json()])
        check(len(results) == 5, results)
        check(isinstance(results[0], sc.Recommendations) and results[0].items == expected.items, results[0])
        check(isinstance(results[4], sc.Recommendations) and results[4].items == expected.items, results[4])
        error = results[1]
        check(isinstance(error, sc.BadRequest) and error.status == 400 and error.code == "invalid_request"
              and "k: 0" in error.message, f"a refused entry is an ApiError in the list: {error!r}")
        check(len(results[2]) == 2 and len(results[3]) == 1, results[2:4])
        check(client.recommend_batch([]) == [], "an empty batch")
        too_many = raises(sc.BadRequest, client.recommend_batch, [good] * 300)
        check("at most 256" in too_many.message, too_many)


def test_error_mapping(ctx):
    ids = item_ids()
    with ctx.client() as client:
        bad = raises(sc.BadRequest, client.recommend, [], k=0)
        check(bad.status == 400 and bad.code == "invalid_request" and "k: 0" in bad.message, repr(bad))
        check(isinstance(bad, sc.ApiError) and isinstance(bad, sc.SeqrecError) and "invalid_request" in str(bad), bad)
        bad = raises(sc.BadRequest, client.recommend, [{"item_id": ids[0], "rating": "x"}])
        check("rating" in bad.message, bad)
        raises(ValueError, client.recommend)  # neither user_interactions nor user_id
        raises(ValueError, client.recommend, [], user_id="u")  # both
        raises(TypeError, client.recommend, [42])
        raises(TypeError, client.recommend, "abc")
        big = raises(sc.PayloadTooLarge, client.recommend, interactions_of([ids[n % 500] for n in range(3000)]))
        check(big.status == 413 and isinstance(big, sc.BadRequest), repr(big))
        missing = raises(sc.NotFound, client.item, "no-such-item-anywhere")
        check(missing.status == 404, repr(missing))
        forbidden = raises(sc.Forbidden, client.reload, path="/etc/passwd")
        check(forbidden.status == 403 and forbidden.code == "forbidden", repr(forbidden))
        corrupt = os.path.join(ctx.model_dir, "corrupt.seqrec")
        with open(ctx.model, "rb") as f, open(corrupt, "wb") as out:
            out.write(f.read()[:1000])
        failed = raises(sc.ApiError, client.reload, path=corrupt)
        check(failed.status == 422 and failed.code == "reload_failed", repr(failed))
    for key in (None, "wrong"):
        with sc.Client(ctx.server.url, api_key=key) as client:
            denied = raises(sc.Unauthorized, client.append, "u", [(ids[0], 1)])
            check(denied.status == 401 and denied.code == "unauthorized", repr(denied))
            raises(sc.Unauthorized, client.delete_user, "u")
            raises(sc.Unauthorized, client.reload)
            check(len(client.recommend([], k=1)) == 1, "reads need no key on this server")


def test_reload(ctx):
    copy = os.path.join(ctx.model_dir, "copy.seqrec")
    shutil.copy(ctx.model, copy)
    with ctx.client() as client:
        before = client.recommend(interactions_of(item_ids()[:4]), k=5)
        name = client.model_info()["name"]
        answer = client.reload()
        check(answer.get("reloaded") == [name], answer)
        answer = client.reload(path=copy)
        check(answer.get("reloaded") == [name], answer)
        check(client.recommend(interactions_of(item_ids()[:4]), k=5).items == before.items, "the same model")
        answer = client.reload(path=ctx.model, model=name)
        check(answer.get("reloaded") == [name] and answer["models"][0]["path"] == ctx.model, answer)


def test_protected_reads(ctx):
    ids = item_ids()
    url = ctx.protected.url
    with sc.Client(url, read_key=READ_KEY) as reader:
        check(len(reader.recommend(interactions_of(ids[:3]), k=3)) == 3, "the read key reads")
        check(reader.history("p1") == [] and "seqrec_" in reader.metrics() and reader.model_info(), "reads")
        check(isinstance(reader.recommend_batch([{"user_id": "p1", "k": 1}])[0], sc.Recommendations), "batch")
        raises(sc.Unauthorized, reader.append, "p1", [(ids[0], 1)])
    with sc.Client(url) as anonymous:
        check(anonymous.health() is True and anonymous.ready()["model"] == "loaded", "probes stay open")
        raises(sc.Unauthorized, anonymous.recommend, [], k=1)
        raises(sc.Unauthorized, anonymous.metrics)
        raises(sc.Unauthorized, anonymous.history, "p1")
    with sc.Client(url, api_key=ADMIN_KEY) as admin:
        check(admin.append("p1", [(ids[0], 1)]) == 1 and len(admin.history("p1")) == 1, "the admin key does both")
        check(len(admin.recommend(user_id="p1", k=2)) == 2, "admin key reads")
    with sc.Client(url, api_key=ADMIN_KEY, read_key=READ_KEY) as both:
        check(both.append("p2", [(ids[1], 1)]) == 1 and len(both.history("p2")) == 1, "each call its key")
        check(both.delete_user("p2") is True, "")
    with sc.Client(url, read_key="wrong") as wrong:
        raises(sc.Unauthorized, wrong.recommend, [], k=1)


def test_threads_share_one_client(ctx):
    ids = item_ids()
    client = ctx.client()
    expected = client.recommend(interactions_of(ids[:6]), k=5).items
    errors, done = [], []

    def work(n):
        try:
            for j in range(15):
                got = client.recommend(interactions_of(ids[:6]), k=5)
                if got.items != expected:
                    errors.append(f"thread {n}: different answer")
                client.append(f"t{n}", [(ids[j], j)])
            done.append(len(client.history(f"t{n}")))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    check(not errors and done == [15] * 4, f"{errors[:3]} {done}")


# ---- routes another change is adding: tested when the server has them ------------------------

def test_similar_items_live(ctx):
    ids = item_ids()
    with ctx.client() as client:
        try:
            got = client.similar_items(ids[0], k=5)
        except sc.ApiError as e:
            if route_missing(e):
                raise Skip(NOT_YET + " (POST /similar_items)")
            raise
        check(isinstance(got, sc.Recommendations) and len(got) == 5 and ids[0] not in map(str, got.ids), got)
        check(all(-1.0001 <= r.score <= 1.0001 for r in got), f"cosines: {got}")
        restricted = client.similar_items(ids[0], k=50, candidate_ids=ids[1:11], exclude_ids=[ids[1]])
        check(set(map(str, restricted.ids)) <= set(ids[2:11]), restricted)
        missing = raises(sc.NotFound, client.similar_items, "no-such-item-anywhere")
        check(missing.status == 404, repr(missing))


def test_item_live(ctx):
    ids = item_ids()
    with ctx.client() as client:
        try:
            got = client.item(ids[0])
        except sc.ApiError as e:
            if route_missing(e):
                raise Skip(NOT_YET + " (GET /items/{id})")
            raise
        check(isinstance(got, dict) and str(got.get("id", got.get("item_id", ids[0]))) == ids[0], got)


def test_models_live(ctx):
    with ctx.client() as client:
        try:
            listed = client.models()
        except sc.ApiError as e:
            if route_missing(e):
                raise Skip(NOT_YET + " (GET /models)")
            raise
        check(listed and all(isinstance(m, dict) for m in listed), listed)
        name = listed[0].get("name")
        if name is not None:
            info = client.model_info(name)
            check(isinstance(info, dict) and info, info)
        raises(sc.NotFound, client.model_info, "no-such-model")


def test_split_live(ctx):
    with ctx.client() as client:
        try:
            current = client.split()
        except sc.ApiError as e:
            if route_missing(e):
                raise Skip(NOT_YET + " (GET/POST /admin/split)")
            raise
        check(isinstance(current, dict), current)
        names = [m.get("name") for m in client.models()]
        if names and names[0]:
            answer = client.set_split({names[0]: 100})
            check(answer == {"weights": {names[0]: 100}} and client.split() == answer, answer)
            raises(sc.ApiError, client.set_split, {names[0]: 1.0})  # weights must sum to 100
            check(client.set_split(None) == {"weights": None}, "cleared")
        raises(sc.Unauthorized, sc.Client(ctx.server.url).set_split, None)


def test_recommend_new_fields_live(ctx):
    history = interactions_of(item_ids()[:3])
    missing = []
    with ctx.client() as client:
        for name, value in (("model", None), ("routing_key", "user-7"), ("fields", ["title"]),
                            ("filter", {"tags_any": ["Comedy"]})):
            if name == "model":
                value = (client.model_info().get("name") or "default")
            try:
                got = client.recommend(history, k=3, **{name: value})
                check(isinstance(got, sc.Recommendations), got)
            except sc.ApiError as e:
                if field_missing(e):
                    missing.append(name)
                elif not isinstance(e, (sc.BadRequest, sc.NotFound)):
                    raise  # a 400/404 for a value this server lacks (no metadata, no such model) is an answer
    if missing:
        raise Skip(f"skipped: request fields not in this server yet: {', '.join(missing)}")


# ---- against the scripted stub ----------------------------------------------------------------

def test_wire_format_of_every_call(ctx):
    answers = [
        OK_RECOMMENDATION,  # recommend
        (200, {"X-Seqrec-Model": "m2"}, {"results": [{"recommendations": [], "message": "m"},
                                                     {"error": {"code": "history_unavailable", "message": "down"}}]}),
        (200, {}, {"similar_items": [{"id": "b", "score": 0.9, "title": "B"}], "message": None, "model": "m3"}),
        (200, {}, {"id": "a/b", "tags": ["x"]}),  # item
        (200, {}, {"models": [{"name": "m1"}, "m2"]}),  # models
        (200, {}, [{"name": "m1"}]),  # models, bare list
        (200, {}, {"name": "m 1"}),  # model_info(name)
        (200, {}, {"weights": {"m1": 0.9}}),  # split
        (200, {}, {"weights": {"m1": 0.5, "m2": 0.5}}),  # set_split
        (200, {}, {"user_id": "a/b", "appended": 3}),  # append
        (200, {}, {"user_id": "a/b", "interactions": [{"item_id": 1, "timestamp": 2, "rating": None}]}),
        (200, {}, {"user_id": "a/b", "deleted": True}),  # delete_user
        (200, {}, {"reloaded": True}),  # reload()
        (200, {}, {"reloaded": True}),  # reload(path, model)
        (200, {"Content-Type": "text/plain"}, b"seqrec_up 1\n"),  # metrics
        (200, {}, {"status": "ok"}),  # health
    ]
    with Stub(answers) as stub, sc.Client(stub.url + "/prefix/", api_key="A", read_key="R") as client:
        got = client.recommend([("1", 5, 4.0), sc.Interaction("2"), {"item_id": 3, "rating": 1.0}], k=4,
                               recommend_seen=True, candidate_ids=["1", 2], exclude_ids=("3",), now=99, model="m1",
                               routing_key="r", filter={"tags_any": ["x"]}, fields=["title"])
        check(got.model == "m1" and got.ids == [7] and got.items[0].score == 0.5, got)
        batch = client.recommend_batch([sc.RecommendRequest(user_id="u", k=2), {"user_id": "v"}])
        check(isinstance(batch[0], sc.Recommendations) and batch[0].model == "m2" and batch[0].message == "m", batch)
        check(isinstance(batch[1], sc.Overloaded) and batch[1].status == 503, repr(batch[1]))
        similar = client.similar_items("a", k=3, candidate_ids=["b"], exclude_ids=["c"], filter={"tags_none": ["y"]},
                                       fields=["title"], model="m3")
        check(similar.ids == ["b"] and similar.items[0].extra == {"title": "B"} and similar.model == "m3", similar)
        check(client.item("a/b") == {"id": "a/b", "tags": ["x"]}, "item")
        check(client.models() == [{"name": "m1"}, {"name": "m2"}] and client.models() == [{"name": "m1"}], "models")
        check(client.model_info("m 1") == {"name": "m 1"}, "model_info")
        check(client.split() == {"weights": {"m1": 0.9}}, "split")
        check(client.set_split({"m1": 0.5, "m2": 0.5})["weights"]["m2"] == 0.5, "set_split")
        check(client.append("a/b", [("1", 5), ("2", 6, 3.5), sc.Interaction("3", 7, 4.0)]) == 3, "append")
        check(client.history("a/b") == [sc.Interaction(1, 2, None)], "history")
        check(client.delete_user("a/b") is True, "delete_user")
        check(client.reload() == {"reloaded": True} and client.reload("m.seqrec", "m2")["reloaded"], "reload")
        check(client.metrics() == "seqrec_up 1\n", "metrics")
        check(client.health() is True, "health")
        sent = [(r["method"], r["path"], r["body"], r["headers"].get("Authorization")) for r in stub.requests]
    expected = [
        ("POST", "/prefix/recommend",
         {"user_interactions": [{"item_id": "1", "timestamp": 5, "rating": 4.0}, {"item_id": "2"},
                                {"item_id": 3, "rating": 1.0}], "k": 4, "recommend_seen": True,
          "candidate_ids": ["1", 2], "exclude_ids": ["3"], "now": 99, "model": "m1", "routing_key": "r",
          "filter": {"tags_any": ["x"]}, "fields": ["title"]}, "Bearer R"),
        ("POST", "/prefix/recommend/batch", {"requests": [{"user_id": "u", "k": 2}, {"user_id": "v"}]}, "Bearer R"),
        ("POST", "/prefix/similar_items", {"item_id": "a", "k": 3, "candidate_ids": ["b"], "exclude_ids": ["c"],
                                           "filter": {"tags_none": ["y"]}, "fields": ["title"], "model": "m3"},
         "Bearer R"),
        ("GET", "/prefix/items/a%2Fb", None, "Bearer R"),
        ("GET", "/prefix/models", None, "Bearer R"),
        ("GET", "/prefix/models", None, "Bearer R"),
        ("GET", "/prefix/models/m%201", None, "Bearer R"),
        ("GET", "/prefix/admin/split", None, "Bearer A"),
        ("POST", "/prefix/admin/split", {"weights": {"m1": 0.5, "m2": 0.5}}, "Bearer A"),
        ("POST", "/prefix/users/a%2Fb/interactions",
         {"user_interactions": [{"item_id": "1", "timestamp": 5}, {"item_id": "2", "timestamp": 6, "rating": 3.5},
                                {"item_id": "3", "timestamp": 7, "rating": 4.0}]}, "Bearer A"),
        ("GET", "/prefix/users/a%2Fb/interactions", None, "Bearer R"),
        ("DELETE", "/prefix/users/a%2Fb", None, "Bearer A"),
        ("POST", "/prefix/admin/reload", None, "Bearer A"),
        ("POST", "/prefix/admin/reload", {"path": "m.seqrec", "model": "m2"}, "Bearer A"),
        ("GET", "/prefix/metrics", None, "Bearer R"),
        ("GET", "/prefix/healthz", None, None),
    ]
    for got_one, want in zip(sent, expected):
        check(got_one == want, f"sent {got_one}\nexpected {want}")
    check(len(sent) == len(expected), f"{len(sent)} requests, expected {len(expected)}")
    with Stub(default=(200, {}, {"recommendations": [], "appended": 0})) as stub, \
            sc.Client(stub.url, api_key="A") as client:
        client.recommend([], k=1)
        client.append("u", [])
        keys = [r["headers"].get("Authorization") for r in stub.requests]
        check(keys == ["Bearer A", "Bearer A"], f"without a read key the admin key reads: {keys}")


def test_retry_on_503_then_success(ctx):
    with Stub([overloaded(), overloaded(), OK_RECOMMENDATION]) as stub:
        client = sc.Client(stub.url, retries=3, backoff=0.05)
        started = time.monotonic()
        got = client.recommend([], k=1)
        check(got.ids == [7] and len(stub.requests) == 3, f"{len(stub.requests)} attempts: {got}")
        check(time.monotonic() - started < 2, "backoff of 0.05 s doubled: well under 2 s")
    with Stub([overloaded(), (200, {}, {"results": []})]) as stub:
        check(sc.Client(stub.url, backoff=0.01).recommend_batch([]) == [] and len(stub.requests) == 2, "batch retried")
    with Stub([overloaded(), (200, {}, {"interactions": []})]) as stub:
        check(sc.Client(stub.url, backoff=0.01).history("u") == [] and len(stub.requests) == 2, "GET retried")
    with Stub([overloaded(), (200, {}, {"weights": None})]) as stub:
        sc.Client(stub.url, backoff=0.01).set_split(None)
        check(len(stub.requests) == 2, "setting a split is idempotent: retried")


def test_retry_after_is_honoured(ctx):
    with Stub([overloaded(retry_after=1), OK_RECOMMENDATION]) as stub:
        started = time.monotonic()
        sc.Client(stub.url, backoff=0.01).recommend([], k=1)
        waited = time.monotonic() - started
        check(len(stub.requests) == 2 and 0.95 <= waited < 3, f"Retry-After: 1 waited {waited:.2f} s")
    # A Retry-After beyond the call's time budget: the error now, not a wait that cannot end in time.
    with Stub([overloaded(retry_after=100)]) as stub:
        started = time.monotonic()
        error = raises(sc.Overloaded, sc.Client(stub.url, timeout=1, retries=3).recommend, [], k=1)
        check(error.retry_after == 100 and len(stub.requests) == 1 and time.monotonic() - started < 1, repr(error))


def test_writes_not_retried(ctx):
    for call in (lambda c: c.append("u", [("1", 1)]), lambda c: c.delete_user("u"), lambda c: c.reload()):
        with Stub(default=overloaded()) as stub:
            error = raises(sc.Overloaded, call, sc.Client(stub.url, backoff=0.01))
            check(len(stub.requests) == 1 and error.code == "overloaded", f"{len(stub.requests)} attempts")
    with Stub([overloaded(), overloaded(), (200, {}, {"appended": 1})]) as stub:
        check(sc.Client(stub.url, backoff=0.01, retry_writes=True).append("u", [("1", 1)]) == 1, "retry_writes")
        check(len(stub.requests) == 3, f"{len(stub.requests)} attempts")
    with Stub(default=overloaded()) as stub:
        error = raises(sc.Overloaded, sc.Client(stub.url, backoff=0.01).ready)
        check(len(stub.requests) == 1, "a probe is not retried")


def test_retries_exhausted_and_other_statuses(ctx):
    with Stub(default=overloaded()) as stub:
        error = raises(sc.Overloaded, sc.Client(stub.url, retries=2, backoff=0.01).recommend, [], k=1)
        check(len(stub.requests) == 3 and error.status == 503, f"retries + 1 attempts: {len(stub.requests)}")
    with Stub(default=overloaded()) as stub:
        raises(sc.Overloaded, sc.Client(stub.url, retries=0).recommend, [], k=1)
        check(len(stub.requests) == 1, "retries=0: one attempt")
    for status, code, kind in ((400, "invalid_request", sc.BadRequest), (401, "unauthorized", sc.Unauthorized),
                               (404, "not_found", sc.NotFound), (413, "payload_too_large", sc.PayloadTooLarge),
                               (500, "internal", sc.ApiError)):
        with Stub(default=(status, {}, {"error": {"code": code, "message": "m"}})) as stub:
            error = raises(kind, sc.Client(stub.url, backoff=0.01).recommend, [], k=1)
            check(len(stub.requests) == 1 and (error.status, error.code, error.message) == (status, code, "m"),
                  f"{status} is not retried: {len(stub.requests)} attempts, {error!r}")
    with Stub(default=(502, {"Content-Type": "text/html"}, b"<html>Bad Gateway</html>")) as stub:
        error = raises(sc.ApiError, sc.Client(stub.url).recommend, [], k=1)
        check(error.status == 502 and error.code == "http_502" and "Bad Gateway" in error.message, repr(error))
    with Stub(default=(200, {"Content-Type": "text/plain"}, b"not json")) as stub:
        raises(sc.ProtocolError, sc.Client(stub.url).recommend, [], k=1)
    with Stub(default=(200, {}, {"recommendations": [{"score": 1}], "results": [1], "interactions": [{}]})) as stub:
        client = sc.Client(stub.url)
        for call in (lambda: client.recommend([], k=1), lambda: client.append("u", []),
                     lambda: client.recommend_batch([{}]), lambda: client.history("u")):
            raises(sc.ProtocolError, call)  # a 2xx answer without what the route promises


def test_answer_before_the_body_is_read(ctx):
    """A server that answers 413 from the headers and closes while a large body is still being sent."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(65536)
                body = b'{"error": {"code": "payload_too_large", "message": "Content-Length exceeds the limit"}}'
                conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                             b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                time.sleep(0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client = sc.Client(f"http://127.0.0.1:{listener.getsockname()[1]}", retries=0)
        for _ in range(3):
            error = raises(sc.ApiError, client.recommend, [("1", n, 4.0) for n in range(300_000)], k=1)
            check(isinstance(error, sc.PayloadTooLarge), f"the server's answer, not a reset connection: {error!r}")
    finally:
        stop.set()
        listener.close()


def test_timeouts(ctx):
    with Stub(default=OK_RECOMMENDATION, delay=1.5) as stub:
        client = sc.Client(stub.url, timeout=0.3, retries=2, backoff=0.05)
        started = time.monotonic()
        error = raises(sc.RequestTimeout, client.recommend, [], k=1)
        elapsed = time.monotonic() - started
        check(isinstance(error, sc.TransportError) and isinstance(error, ConnectionError)
              and isinstance(error, TimeoutError), repr(error))
        check(elapsed <= 0.3 * 3 + 0.25, f"bounded by timeout * (retries + 1): {elapsed:.2f} s")
        check(1 <= len(stub.requests) <= 3, f"{len(stub.requests)} attempts")
        before = len(stub.requests)
        started = time.monotonic()
        raises(sc.RequestTimeout, client.append, "u", [("1", 1)])
        check(len(stub.requests) == before + 1 and time.monotonic() - started < 0.6, "a write that timed out: once")


def test_connection_failures(ctx):
    port = free_port()
    client = sc.Client(f"http://127.0.0.1:{port}", timeout=1, retries=2, backoff=0.05)
    for call in (lambda: client.recommend([], k=1), lambda: client.append("u", [("1", 1)])):
        error = raises(sc.TransportError, call)
        check(isinstance(error, ConnectionError) and str(port) in str(error), repr(error))
    # A write the server never saw (the connection was refused) is re-sent: here the server
    # comes up while the client backs off.
    client = sc.Client(f"http://127.0.0.1:{port}", timeout=2, retries=4, backoff=0.2)
    results = []
    worker = threading.Thread(target=lambda: results.append(client.append("u", [("1", 1)])))
    worker.start()
    time.sleep(0.25)
    with Stub(default=(200, {}, {"appended": 1}), port=port) as stub:
        worker.join(timeout=10)
        check(results == [1] and len(stub.requests) == 1, f"refused, then sent once: {results} {stub.requests}")


def test_keep_alive_per_thread(ctx):
    with Stub(default=OK_RECOMMENDATION) as stub:
        client = sc.Client(stub.url)
        for _ in range(5):
            client.recommend([], k=1)
        check(len(stub.clients) == 1, f"5 calls on one connection: {len(stub.clients)}")
        other = threading.Thread(target=lambda: [client.recommend([], k=1) for _ in range(3)])
        other.start()
        other.join()
        check(len(stub.clients) == 2, f"one connection per thread: {len(stub.clients)}")
        client.close()
        client.recommend([], k=1)
        check(len(stub.clients) == 3, "usable after close(), on a new connection")
    # A server that closes idle connections without saying so: the next call, even a write
    # (never retried), goes out on a new connection instead of failing on the dead one.
    with Stub(default=(200, {}, {"appended": 1}), silent_close=True) as stub:
        client = sc.Client(stub.url, retries=0)
        for _ in range(3):
            check(client.append("u", [("1", 1)]) == 1, "append after an idle close")
            time.sleep(0.1)
        check(len(stub.requests) == 3 and len(stub.clients) == 3, f"{len(stub.clients)} connections")


def test_server_restart_under_a_kept_connection(ctx):
    ids = item_ids()
    server = Server(ctx.binary, ctx.model, ctx.workdir)
    client = sc.Client(server.url, retries=0)
    try:
        check(client.append("k", [(ids[0], 1)]) == 1, "first append")
        server.stop()
        check(client.health() is False, "health() once the server is gone")
        error = raises(sc.TransportError, client.append, "k", [(ids[0], 1)])
        check(str(server.port) in str(error), repr(error))
        server = Server(ctx.binary, ctx.model, ctx.workdir, port=server.port)
        check(client.append("k", [(ids[1], 2)]) == 1, "the same client after the restart, even with retries=0")
        check([str(x.item_id) for x in client.history("k")] == [ids[1]], "a new memory store")
    finally:
        server.stop()


def test_installs_with_pip(ctx):
    pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    if pip.returncode != 0:
        raise Skip("pip is not installed (apt-get install python3-pip)")
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "source")  # a copy: an in-tree build would leave build/ in the repository
        shutil.copytree(PACKAGE_ROOT, source, ignore=shutil.ignore_patterns("tests", "build", "*.egg-info",
                                                                             "__pycache__"))
        target = os.path.join(tmp, "site")
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                               "--no-index", "--quiet", "--target", target, source], capture_output=True, text=True)
        check(proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}")
        check(os.path.exists(os.path.join(target, "seqrec_client", "py.typed")), "py.typed is installed (PEP 561)")
        proc = subprocess.run([sys.executable, "-c", "import seqrec_client as s; print(s.__file__, s.__version__)"],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": target}, cwd=tmp)
        check(proc.returncode == 0 and proc.stdout.startswith(target), proc.stdout + proc.stderr)


def test_type_checks(ctx):
    mypy = shutil.which("mypy")
    if not mypy:
        raise Skip("mypy is not installed (apt-get install mypy)")
    with tempfile.TemporaryDirectory() as cache:
        proc = subprocess.run([mypy, "--strict", "--python-version", "3.9", "--cache-dir", cache,
                               os.path.join(PACKAGE_ROOT, "src", "seqrec_client")], capture_output=True, text=True)
    check(proc.returncode == 0, proc.stdout + proc.stderr)


TESTS = [test_probes_metrics_and_model, test_recommend_forms_match_raw_http, test_recommend_options,
         test_history_round_trip, test_batch, test_error_mapping, test_reload, test_protected_reads,
         test_threads_share_one_client, test_similar_items_live, test_item_live, test_models_live, test_split_live,
         test_recommend_new_fields_live, test_wire_format_of_every_call, test_retry_on_503_then_success,
         test_retry_after_is_honoured, test_writes_not_retried, test_retries_exhausted_and_other_statuses,
         test_answer_before_the_body_is_read,
         test_timeouts, test_connection_failures, test_keep_alive_per_thread,
         test_server_restart_under_a_kept_connection, test_installs_with_pip, test_type_checks]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seqrec", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--only")
    args = parser.parse_args()
    if not os.path.exists(args.seqrec):
        print(f"SKIPPED: no seqrec binary at {args.seqrec} (cmake --build build --target seqrec)")
        return 77
    checkpoint = sorted(glob.glob(os.path.join(EXAMPLE, "SASRec.*.pth")))
    if not checkpoint:
        print("SKIPPED: no bundled example checkpoint")
        return 77
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(os.path.join(args.workdir, "models"))
    ctx = Context(args, os.path.abspath(args.workdir))
    proc = subprocess.run([ctx.binary, "convert", "--from", "pmixer", checkpoint[0], "--item-ids",
                           os.path.join(EXAMPLE, "item_ids.txt"), "--rating-threshold", "3.5", "--out", ctx.model],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print("FAIL convert:", proc.stderr)
        print("0 passed, 1 failed")
        return 1
    passed = failed = skipped = 0
    try:
        for test in TESTS:
            if args.only and args.only not in test.__name__:
                continue
            try:
                test(ctx)
                passed += 1
                print(f"ok   {test.__name__}", flush=True)
            except Skip as e:
                skipped += 1
                print(f"skip {test.__name__}: {e}", flush=True)
            except Exception as e:  # noqa: BLE001
                failed += 1
                print(f"FAIL {test.__name__}: {e}", flush=True)
                if not isinstance(e, Failure):
                    traceback.print_exc()
    finally:
        ctx.stop()
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
