"""User-facing errors: one line on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import functools
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
    """Ray wraps exceptions raised in tasks; find a UserError in the cause chain."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, UserError):
            return cur
        stack.extend([cur.__cause__, cur.__context__, getattr(cur, "cause", None)])
    return None
