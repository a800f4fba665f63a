"""Request-body size limits, enforced while the body streams in (ASGI middleware).

A declared ``Content-Length`` over the limit is refused before reading; a body that grows past
the limit (chunked, or a lying header) is cut off, and whatever the application would have
answered is replaced by the 413 ``payload_too_large`` problem. JSON bodies (``/orders``, any
``application/json``) get the small ``json_limit``; uploads (multipart) the large ``limit``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.errors import PayloadTooLargeError
from service.problems import PROBLEM_JSON, TYPE_ROOT

JSON_PATHS = ("/orders", "/ui")
"""Routes with small bodies whatever the declared content type: orders, the review pages'
forms (these authenticate by session cookie after the body limit, not before it)."""


def _problem_413(limit: int, path: str) -> tuple[dict[str, Any], bytes]:
    body = json.dumps(
        {
            "type": f"{TYPE_ROOT}{PayloadTooLargeError.code}",
            "title": "Payload Too Large",
            "status": 413,
            "detail": f"the request body exceeds the limit of {limit} bytes",
            "instance": path,
            "code": PayloadTooLargeError.code,
        }
    ).encode()
    start = {
        "type": "http.response.start",
        "status": 413,
        "headers": [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, body


class BodySizeLimit:
    """Refuse request bodies larger than ``limit`` bytes with 413 problem+json."""

    def __init__(self, app: ASGIApp, limit: int, json_limit: int | None = None) -> None:
        self.app = app
        self.limit = limit
        self.json_limit = limit if json_limit is None else json_limit

    def limit_for(self, scope: Scope) -> int:
        """The limit of one request: small for JSON bodies, large for uploads."""
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        is_json = content_type == b"application/json" or content_type.endswith(b"+json")
        if is_json or str(scope.get("path", "")).startswith(JSON_PATHS):
            return self.json_limit
        return self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        start, body = _problem_413(limit, scope.get("path", ""))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        state = {"received": 0, "exceeded": False, "replaced": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["exceeded"] = True
                    raise PayloadTooLargeError(f"the request body exceeds {limit} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            if not state["exceeded"]:
                await send(message)
            elif message["type"] == "http.response.start" and not state["replaced"]:
                state["replaced"] = True
                await send(start)
                await send({"type": "http.response.body", "body": body})

        await self.app(scope, counting_receive, guarded_send)
