"""The scripted teacher as its own process, so it outlives a client killed with SIGKILL.

    python -m tests.support.serve_openai --delay 0.2 --log requests.jsonl [--faults] [--api-key K] [--hold FILE]

Listens on a free loopback port and prints `READY <base_url>` on stdout. Every request appends two
JSON lines to --log (flushed at once): {"event": "arrive", "digest", "t"} when
it comes in and {"event": "done", "digest", "t", "kind"} after the reply was
written, so a test can tell which calls finished before a crash and which were
sent again after it. --faults answers through `FaultyTeacher`. While the --hold file exists,
requests that arrive wait (in flight) until it is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

from tests.support import teacher
from tests.support.openai_server import FakeOpenAIServer, Fault

MALFORMED = "Sorry, I cannot put that in the requested format today."


def bucket(digest: str) -> int:
    """0..99, fixed per request: which fault a call gets does not depend on timing."""
    return int(digest, 16) % 100


class FaultyTeacher:
    """The scripted teacher behind a bad network and a sloppy model, deterministic per request.

    bucket  0-29: 200 with content that is not JSON (30%: invalid_output, the row is dropped)
    bucket 30-33: HTTP 500 on every attempt (retries run out: llm_error, dropped)
    bucket 34-53: 429 on the first attempt (with Retry-After: 0), then the real reply
    bucket 54-63: 500 on the first attempt, then the real reply
    bucket 64-73: connection dropped without a reply on the first attempt, then the real reply
    Only structured calls (with a JSON schema) are made malformed: free text has no format to break.
    """

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()

    def kind(self, request: dict) -> tuple[str, int]:
        d = teacher.digest(request)
        with self.lock:
            self.attempts[d] = n = self.attempts.get(d, 0) + 1
        b = bucket(d)
        if b < 30 and teacher.schema_name(request):
            return "malformed", n
        if 30 <= b < 34:
            return "always_500", n
        if n == 1 and 34 <= b < 54:
            return "429", n
        if n == 1 and 54 <= b < 64:
            return "500", n
        if n == 1 and 64 <= b < 74:
            return "cut", n
        return "ok", n

    def __call__(self, request: dict) -> str | Fault:
        kind, _ = self.kind(request)
        return {
            "malformed": Fault(delay_s=self.delay_s, content=MALFORMED),
            "always_500": Fault(status=500),
            "429": Fault(status=429),
            "500": Fault(status=500),
            "cut": Fault(cut=True),
            "ok": Fault(delay_s=self.delay_s, content=teacher.reply(request)),
        }[kind]


class Logged:
    """Wraps a responder: appends arrive/done lines to a JSONL log."""

    def __init__(self, responder, path: str | None, delay_s: float = 0.0, hold: str | None = None):
        self.responder, self.delay_s, self.hold = responder, delay_s, hold
        # Open for the server's lifetime; line-buffered so a reader sees each event at once.
        self.file = open(path, "a", buffering=1) if path else None  # noqa: SIM115
        self.lock = threading.Lock()

    def _log(self, **event) -> None:
        if self.file:
            with self.lock:
                self.file.write(json.dumps(event) + "\n")
                self.file.flush()

    def __call__(self, request: dict):
        d = teacher.digest(request)
        self._log(event="arrive", digest=d, t=time.time())
        while self.hold and os.path.exists(self.hold):
            time.sleep(0.02)
        reply = self.responder(request)
        if isinstance(reply, Fault):
            if reply.delay_s:  # the server would sleep after we return: account for it here
                time.sleep(reply.delay_s)
                reply = Fault(status=reply.status, cut=reply.cut, malformed=reply.malformed, content=reply.content)
            kind = "status" if reply.status else "cut" if reply.cut else "ok"
        else:
            time.sleep(self.delay_s)
            kind = "ok"
        # "done" is written before the bytes go out; a client killed now may still not have it.
        self._log(event="done", digest=d, t=time.time(), kind=kind)
        return reply


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--delay", type=float, default=0.0, help="seconds per reply")
    p.add_argument("--log", help="JSONL file of arrive/done events")
    p.add_argument("--faults", action="store_true", help="answer through FaultyTeacher")
    p.add_argument("--api-key", help="require this bearer key")
    p.add_argument("--hold", help="while this file exists, hold arriving requests")
    args = p.parse_args(argv)
    inner = FaultyTeacher(args.delay) if args.faults else teacher.reply
    server = FakeOpenAIServer(Logged(inner, args.log, 0.0 if args.faults else args.delay, args.hold), api_key=args.api_key)
    with server:
        print(f"READY {server.base_url}", flush=True)
        try:
            server.thread.join()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
