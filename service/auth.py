"""Bearer-token authentication (tokens from the setting ``api_tokens``)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from model.errors import ConfigurationError
from model.settings import Settings
from service.errors import UnauthorizedError

bearer = HTTPBearer(auto_error=False, description="one of the tokens in LLMCTV_API_TOKENS")


def check_auth_configured(settings: Settings) -> None:
    """Refuse to run without tokens unless the development flag ``allow_no_auth`` is set."""
    if not settings.api_tokens and not settings.allow_no_auth:
        raise ConfigurationError(
            "no API token configured: set LLMCTV_API_TOKENS (comma-separated), or for local "
            "development only LLMCTV_ALLOW_NO_AUTH=true (llmctv serve --dev)"
        )


def token_accepted(settings: Settings, presented: str | None) -> bool:
    """Whether ``presented`` matches a configured token (constant-time comparison)."""
    if not settings.api_tokens:
        return settings.allow_no_auth
    if not presented:
        return False
    given = presented.encode()
    return any(hmac.compare_digest(given, token.encode()) for token in settings.api_tokens)


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """FastAPI dependency: 401 ``unauthorized`` unless a valid bearer token is presented."""
    settings: Settings = request.app.state.llmctv.settings
    token = credentials.credentials if credentials is not None else None
    if not token_accepted(settings, token):
        raise UnauthorizedError("a valid 'Authorization: Bearer <token>' header is required")


Authorized = Annotated[None, Depends(require_token)]
