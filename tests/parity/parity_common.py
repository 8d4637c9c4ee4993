"""What the parity suites share: running the binary, the request for a whole-catalog
ranking, and the comparison of its response with the reference scores."""

import json
import os
import subprocess
import sys

import numpy as np

SCORE_TOLERANCE = 1e-4
TOP_N = 10
COMMAND_TIMEOUT_SECONDS = 120


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def record(self, ok, line):
        print(("PASS " if ok else "FAIL ") + line, flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1


def run(command, stdin_text=None):
    return subprocess.run(command, input=stdin_text, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_SECONDS)


def require_kernel_path(seqrec):
    """Under SEQREC_CPU_ISA (CTest's isa.* tests), exit 77 (skipped) when this machine cannot
    run that kernel path: the binary refuses it with a one-line error."""
    path = os.environ.get("SEQREC_CPU_ISA")
    if not path:
        return
    done = run([seqrec, "--version"])
    if done.returncode != 0:
        print(f"SKIP: kernel path {path}: {one_line(done.stderr)}")
        sys.exit(77)
    print(f"kernel path forced: {path}")


def seqrec_binary(path, workdir):
    """The seqrec binary at `path` as an absolute path, ready for a suite: the kernel path
    checked (require_kernel_path), `workdir` made. None, after a FAIL line, when there is no
    executable there."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        print(f"FAIL: no executable seqrec binary at {path}")
        return None
    seqrec = os.path.abspath(path)
    require_kernel_path(seqrec)
    os.makedirs(workdir, exist_ok=True)
    return seqrec


def finish(results):
    """The summary line, and the suite's exit status."""
    print(f"{results.passed} passed, {results.failed} failed")
    return 1 if results.failed else 0


def record_refusal(results, label, result, must_mention, leftovers):
    """A refused input: the command exits non-zero with exactly one stderr line mentioning each
    of `must_mention` (case-insensitive), and `leftovers` (what it left behind) is empty.
    `label` leads the result's line."""
    missing = [word for word in must_mention if word.lower() not in result.stderr.lower()]
    stderr_lines = len(result.stderr.strip().splitlines())
    problems = []
    if result.returncode == 0:
        problems.append("exit status 0")
    if stderr_lines != 1:
        problems.append(f"{stderr_lines} stderr lines")
    if missing:
        problems.append(f"stderr does not mention {missing}")
    if leftovers:
        problems.append(f"left behind {leftovers}")
    detail = "; ".join(problems) if problems else "refused"
    results.record(not problems, f"{label} {detail} -- stderr: {one_line(result.stderr)}")


def one_line(text):
    return text.strip().replace("\n", " | ")[:400]


def history_of_length(length, max_row, rng):
    """Random rows 1..max_row with repeats: the last item twice in a row, an early one again."""
    history = rng.integers(1, max_row + 1, size=length)
    if length >= 2:
        history[-1] = history[-2]
    if length >= 4:
        history[length // 2] = history[0]
    return [int(row) for row in history]


def request_json(history, ids, k):
    """A list-form request of the history (rows → their catalog ids), seen items allowed."""
    interactions = [{"item_id": ids[row], "timestamp": 1_000_000 + position} for position, row in enumerate(history)]
    return json.dumps({"user_interactions": interactions, "k": k, "recommend_seen": True})


def recommend_all(seqrec, model_file, history, ids):
    """`seqrec recommend` for the whole catalog (ids[0] is the padding row)."""
    return run([seqrec, "recommend", "--model", model_file, "--max-k", str(len(ids) - 1)],
               request_json(history, ids, len(ids) - 1))


def compare(response_text, expected, ids):
    """(max |delta|, top-10 ok, problem or None). expected[r] is row r's score (row 0 included)."""
    try:
        recommendations = json.loads(response_text)["recommendations"]
        got_ids = [str(entry["id"]) for entry in recommendations]
        scores = [float(entry["score"]) for entry in recommendations]
    except (ValueError, KeyError, TypeError) as error:
        return float("inf"), False, f"unreadable response ({error}): {one_line(response_text)}"
    row_of = {item: row for row, item in enumerate(ids) if row > 0}
    if sorted(got_ids) != sorted(row_of):
        return float("inf"), False, f"expected every catalog item once, got {len(got_ids)} ids"
    if any(later > earlier for earlier, later in zip(scores, scores[1:])):
        return float("inf"), False, "recommendations are not sorted by score descending"
    rows = np.array([row_of[item] for item in got_ids])
    max_delta = float(np.max(np.abs(np.array(scores) - expected[rows])))
    # Reference order: score descending, ties by row; exact ties may swap.
    expected_top = sorted(range(1, len(ids)), key=lambda row: (-expected[row], row))[:TOP_N]
    top_ok = all(got == want or expected[got] == expected[want] for got, want in zip(rows[:TOP_N], expected_top))
    return max_delta, top_ok, None
