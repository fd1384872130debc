"""The probe's one GET: a redirect is the proxy's answer, not followed."""

from __future__ import annotations

import http.server
import threading

from cdlib.proxy.base import http_get


class _Redirects(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the handler's name is the method's)
        if self.path == "/moved":
            self.send_response(301)
            self.send_header("Location", "https://probe.invalid:1/elsewhere")  # would not resolve
            self.send_header("X-Cdlib-Upstream", "127.0.0.1:20001")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_redirect_is_returned_as_the_answer_with_its_headers():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirects)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        status, headers, _ = http_get(base + "/moved", {"X-Cdlib-Probe": "1"}, 3)
        assert (status, headers["Location"], headers["X-Cdlib-Upstream"]) == (
            301, "https://probe.invalid:1/elsewhere", "127.0.0.1:20001")
        assert http_get(base + "/", {}, 3)[::2] == (200, b"ok\n")
    finally:
        server.shutdown()
        server.server_close()
    assert http_get(base + "/", {}, 1)[0] == 0  # nothing answers any more
