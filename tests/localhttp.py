"""A local HTTP server in a thread, for download tests without the internet.

Use the fixture by importing it into a test module: `from .localhttp import served  # noqa: F401`.
"""

from __future__ import annotations

import functools
import http.server
import threading

import pytest


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's captured output to the test's own
        pass


@pytest.fixture
def served(tmp_path):
    """(folder, base URL): files written into the folder are served at BASE/<name> on 127.0.0.1."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
