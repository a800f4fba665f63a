"""Request-body size limit, enforced while the body streams in (ASGI middleware).

A declared ``Content-Length`` over the limit is refused before reading; a body that grows past
the limit (chunked, or a lying header) is cut off, and whatever the application would have
answered is replaced by the 413 ``payload_too_large`` problem.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.errors import PayloadTooLargeError
from service.problems import PROBLEM_JSON, TYPE_ROOT


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

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, body = _problem_413(self.limit, scope.get("path", ""))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        state = {"received": 0, "exceeded": False, "replaced": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.limit:
                    state["exceeded"] = True
                    raise PayloadTooLargeError(f"the request body exceeds {self.limit} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            if not state["exceeded"]:
                await send(message)
            elif message["type"] == "http.response.start" and not state["replaced"]:
                state["replaced"] = True
                await send(start)
                await send({"type": "http.response.body", "body": body})

        await self.app(scope, counting_receive, guarded_send)
