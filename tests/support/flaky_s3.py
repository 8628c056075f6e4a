"""A moto S3 server on loopback that answers chosen writes with a 503 once, as S3 does under load.

`FlakyS3(fail=lambda method, path: ...)` wraps moto's WSGI app: the first
request that matches gets `503 SlowDown` (S3's throttling reply); every other
request, and the same one retried, reaches moto. `injected` lists what failed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from tests.support.loopback import Served


class FlakyS3(Served):
    def __init__(self, fail: Callable[[str, str], bool], times: int = 1):
        from moto.moto_server.threaded_moto_server import MotoRequestHandler
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        self.fail, self.times = fail, times
        self.injected: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)

        def flaky(environ, start_response):
            method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
            with self.lock:
                hit = len(self.injected) < self.times and self.fail(method, path)
                if hit:
                    self.injected.append((method, path))
            if hit:
                environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                start_response("503 Slow Down", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
                return [body]
            return app(environ, start_response)

        super().__init__(make_server("127.0.0.1", 0, flaky, True, request_handler=MotoRequestHandler))

    @property
    def endpoint(self) -> str:
        return self.url
