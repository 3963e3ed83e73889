"""Static HTTP of the presenter server: the page's files and the small responses, answered before any
websocket handshake (sans-I/O: request path in, ``websockets`` ``Response`` out).

Files are served strictly from inside the web root (no traversal, no hidden files, known types only) with a
content security policy that lets the page load only its own files.
"""

from __future__ import annotations

import email.utils
import http
import mimetypes
from pathlib import Path
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.http11 import Response

DEFAULT_WEB_ROOT = Path(__file__).resolve().parents[1] / "clients" / "web"
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
# The page loads only its own files; media comes via RTCPeerConnection (srcObject), control via the websocket.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; media-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def response(
    status: int, body: bytes, content_type: str, extra: list[tuple[str, str]] | None = None
) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            *(extra or []),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def text(status: int, text: str) -> Response:
    return response(status, (text + "\n").encode(), "text/plain; charset=utf-8")


def resolve_static(web_root: Path, url_path: str) -> Path | None:
    """Map a URL path to a file strictly inside ``web_root`` (no traversal, no hidden files, known types)."""
    try:
        return _resolve_static(web_root, url_path)
    except (OSError, ValueError):  # e.g. a path segment longer than the file system allows: not found
        return None


def _resolve_static(web_root: Path, url_path: str) -> Path | None:
    path = unquote(url_path)
    if path in ("", "/"):
        path = "/index.html"
    if "\x00" in path or "\\" in path:
        return None
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in (".", "..") or p.startswith(".") for p in parts):
        return None
    root = web_root.resolve()
    candidate = root.joinpath(*parts).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    if candidate.suffix.lower() not in STATIC_TYPES:
        return None
    return candidate




def static_file(web_root: Path, url_path: str) -> Response:
    """The file under ``web_root`` for ``url_path`` with its type and the page's security headers, or 404."""
    path = resolve_static(web_root, url_path)
    if path is None:
        return text(404, "not found")
    content_type = STATIC_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "text/plain"
    return response(
        200,
        path.read_bytes(),
        content_type,
        [("Content-Security-Policy", CONTENT_SECURITY_POLICY), ("Referrer-Policy", "no-referrer")],
    )
