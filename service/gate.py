"""The gate in front of every route: the bearer token first, then the body size, before any body is read.

FastAPI reads and parses a request's body before it resolves the route's dependencies, so a
token checked there comes after a body of any size has been read; and neither Starlette nor
uvicorn caps a request body. Hence this pure-ASGI middleware of our own:

- A write (any method but GET, HEAD and OPTIONS) without a good token is refused, 401 or 403,
  without reading its body. A read is too when HDETACH_READ_REQUIRES_TOKEN is set, except the
  probes in OPEN_PATHS.
- A body larger than HDETACH_MAX_BODY_BYTES is refused with 413: at once when Content-Length says
  so, otherwise (chunked) as soon as the bytes read pass the limit. A body within it is read
  here and handed on to the application unchanged.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployment.settings import Settings
from service.deps import auth_failure
from service.problems import problem_response

OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes: they tell only that the process and database are up
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Gate:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def needs_token(self, scope: Scope) -> bool:
        if scope["method"] not in READ_METHODS:
            return True
        return self.settings.read_requires_token and scope["path"] not in OPEN_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.needs_token(scope):
            failure = auth_failure(self.settings, headers.get("authorization"))
            if failure is not None:
                code, reason = failure
                extra = {"WWW-Authenticate": "Bearer"} if code == 401 else None
                await problem_response(code, reason, scope["path"], headers=extra)(scope, receive, send)
                return
        limit = self.settings.max_body_bytes
        too_large = problem_response(413, f"request body exceeds {limit} bytes", scope["path"])
        length = headers.get("content-length")
        if length is not None and not (length.isascii() and length.isdigit()):
            await problem_response(400, "Content-Length is not a number", scope["path"])(scope, receive, send)
            return
        if length is not None and int(length) > limit:
            await too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nobody to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal body
            if body is not None:
                first, body = body, None
                return first
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)
