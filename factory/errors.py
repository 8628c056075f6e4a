"""User-facing errors: one line on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import functools
import re
import sys
from typing import Callable


class UserError(Exception):
    """A problem the user can fix (bad config, bad input, unreachable service).

    The message is printed as one line; keep it specific: name the file, key or
    path and what is wrong with it.
    """

    exit_code = 2


def one_line(message: object) -> str:
    return " ".join(str(message).split())


def cli_entry(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a job's main so a UserError becomes `ragtune: error: ...` and exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except KeyboardInterrupt:
            print("ragtune: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            # Ray re-raises a task's exception wrapped; the UserError may be inside.
            user = find_user_error(exc)
            if user is None:
                raise
            print(f"ragtune: error: {one_line(user)}", file=sys.stderr)
            return user.exit_code

    return wrapper


def find_user_error(exc: BaseException) -> UserError | None:
    """Ray wraps exceptions raised in tasks; find a UserError in the cause chain. Ray's wrapper
    RayTaskError(UserError) is a UserError too, but its message is the worker's traceback: the
    UserError raised is its `cause`. Ray Data appends its retry note to the message of an exception
    raised in a UDF (cluster.configure_data has it raised as itself): that note is not the user's."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        cause = getattr(cur, "cause", None)
        if isinstance(cur, UserError) and not isinstance(cause, UserError):
            message = str(cur)
            if (cut := _RAY_RETRY_NOTE.search(message)) is not None:
                return UserError(message[:cut.start()])
            return cur
        stack.extend([cur.__cause__, cur.__context__, cause])
    return None


# ray/data/_internal/util.py _annotate_exception_with_retry_context: "\nFailed to <what> after 1/1 attempts (total backoff ...".
_RAY_RETRY_NOTE = re.compile(r"\nFailed to [^\n]* after \d+/\d+ attempts \(total backoff", re.DOTALL)
