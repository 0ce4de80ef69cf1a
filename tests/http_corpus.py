"""The malformed-request corpus (issue 11, item 10): requests every edvit HTTP server must answer with a 4xx
status line and a JSON error body, never a 500, an HTML page or silence. Used by tests/unit/test_runtime_httpd.py
(a bare httpd server), tests/e2e/test_worker_oip.py (the real worker) and bench/worker_limits.py."""

from __future__ import annotations

NESTED = b"[" * 100_000 + b"]" * 100_000


def corpus(post_path: str, token: str) -> list:
    """[(label, raw request bytes, status, what the error message must say)]; POSTs go to `post_path`."""
    POST = f"POST {post_path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
    return [
        ("garbage request line", b"\x16\x03\x01\x02\x00 hello\r\n\r\n", 400, "bad request line"),
        ("no HTTP version", b"GET /v2/health/live\r\n\r\n", 400, "bad request line"),
        ("HTTP/2.0 request line", b"GET /v2/health/live HTTP/2.0\r\n\r\n", 505, "unsupported HTTP version"),
        ("Content-Length +2", (POST + "Content-Length: +2\r\n\r\n{}").encode(), 400, "Content-Length must be"),
        ("Content-Length 1_0", (POST + "Content-Length: 1_0\r\n\r\n{\"inputs\":1}").encode(), 400,
         "Content-Length must be"),
        ("Content-Length superscript two", (POST + "Content-Length: \u00b2\r\n\r\n{}").encode("latin-1"), 400,
         "Content-Length must be"),
        ("Content-Length 5000 digits", (POST + "Content-Length: " + "9" * 5000 + "\r\n\r\n").encode(), 400,
         "Content-Length must be"),
        ("Inference-Header-Content-Length superscript two",
         (POST + "Inference-Header-Content-Length: \u00b2\r\nContent-Length: 2\r\n\r\n{}").encode("latin-1"), 400,
         "Inference-Header-Content-Length must be"),
        ("Inference-Header-Content-Length 5000 digits",
         (POST + "Inference-Header-Content-Length: " + "7" * 5000 + "\r\nContent-Length: 2\r\n\r\n{}").encode(), 400,
         "Inference-Header-Content-Length must be"),
        ("JSON nested 100k deep", (POST + f"Content-Length: {len(NESTED)}\r\n\r\n").encode() + NESTED, 400,
         "nested too deeply"),
        ("chunked body", (POST + "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n").encode(), 411,
         "chunked"),
        ("two different Content-Lengths", (POST + "Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}").encode(), 400,
         "conflicting"),
        ("space before the colon", (POST + "Content-Length : 2\r\n\r\n{}").encode(), 400, "malformed header"),
        ("folded header line", (POST + " folded\r\nContent-Length: 2\r\n\r\n{}").encode(), 400, "malformed header"),
        ("request line over 64 KiB", b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "too long"),
        ("101 headers", b"GET /v2/health/live HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431, "too many"),
        ("unknown method", f"PUT {post_path} HTTP/1.1\r\nContent-Length: 0\r\n\r\n".encode(), 405, "not allowed"),
    ]
