"""A test server bound to a free loopback port, answering from a daemon thread while entered."""

from __future__ import annotations

import socketserver
import threading
from typing import Self


class Served:
    """Base of the fake servers: `with Fake(...) as f:` serves `f.server` at `f.url` until exit."""

    def __init__(self, server: socketserver.BaseServer):
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
