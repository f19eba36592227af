"""What the server refuses before Gradio sees a request: bodies over a size
limit (Gradio parses a whole JSON body, a chat history or pasted lines,
before a handler can refuse it: one 40 MB history took half a minute and
3.5 GB; uploads have their own limit, launch's `max_file_size`), and calls
by name to the page's own events (`api_visibility="private"`), which
Gradio's /call/ routes would otherwise run."""

from __future__ import annotations

import json

MAX_REQUEST_BYTES = 2_000_000   # the largest legitimate body (1 MB of pasted lines) and room
EXEMPT = ("/gradio_api/upload",)


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` gets 413 when its
    Content-Length says so, and a chunked one is cut off (the app sees the
    client leave) as soon as it passes the limit."""

    def __init__(self, app, max_bytes: int = MAX_REQUEST_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(EXEMPT):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await refuse(send, 413, f"The request is over {self.max_bytes:,} bytes.")
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    return {"type": "http.disconnect"}
            return message
        return await self.app(scope, counted, send)


async def refuse(send, status: int, message: str) -> None:
    """An error in both shapes clients read: Gradio's `detail` and OpenAI's `error`."""
    body = json.dumps({"detail": message, "error": {
        "message": message, "type": "invalid_request_error", "code": status}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


CALL_ROUTES = ("/gradio_api/call/", "/gradio_api/run/")


class PublicEventsOnly:
    """ASGI middleware: /gradio_api/call/NAME and /gradio_api/run/NAME only
    for the events the API offers (their names, from the built page)."""

    def __init__(self, app, public: frozenset[str]):
        self.app, self.public = app, public

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        for prefix in CALL_ROUTES:
            if path.startswith(prefix):
                name = path[len(prefix):].removeprefix("v2/").split("/")[0]
                if name not in self.public:
                    return await refuse(send, 404, f"There is no API endpoint /{name}.")
        return await self.app(scope, receive, send)


def public_events(demo) -> frozenset[str]:
    return frozenset(fn.api_name for fn in demo.fns.values()
                     if fn.fn is not None and fn.api_visibility != "private")
