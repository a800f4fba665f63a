"""Who is calling: named identities with roles, from bearer tokens (setting ``api_tokens``).

``LLMCTV_API_TOKENS`` holds comma-separated entries ``name:role:secret``. A bare ``secret``
(the form of earlier versions) is the identity ``default`` with role ``admin``, so existing
deployments keep working. Roles are ordered: ``submitter`` < ``reviewer`` < ``admin``; each has
the rights of the roles below it.

- ``submitter``: contour, orders, read jobs;
- ``reviewer``: submitter rights plus review decisions;
- ``admin``: everything, plus ``/metrics`` and ``/audit``.

Secrets are compared in constant time against every entry (no early exit).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from model.errors import ConfigurationError
from service.errors import ForbiddenError, UnauthorizedError
from service.settings import Settings

bearer = HTTPBearer(auto_error=False, description="a secret of LLMCTV_API_TOKENS")


class Role(StrEnum):
    """What an identity may do; each role includes the rights of the ones before it."""

    SUBMITTER = "submitter"
    REVIEWER = "reviewer"
    ADMIN = "admin"


_RANK = {Role.SUBMITTER: 0, Role.REVIEWER: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Identity:
    """A named caller (a person, or an integration such as a PACS router)."""

    name: str
    role: Role

    def may(self, needed: Role) -> bool:
        """Whether this identity has the rights of ``needed``."""
        return _RANK[self.role] >= _RANK[needed]


@dataclass(frozen=True)
class TokenEntry:
    """One configured identity and its secret."""

    identity: Identity
    secret: bytes


DEVELOPMENT_IDENTITY = Identity("development", Role.ADMIN)


def parse_token_entries(entries: Sequence[str]) -> list[TokenEntry]:
    """``name:role:secret`` (or a bare secret: ``default``, admin) -> entries.

    Raises
    ------
    ConfigurationError
        An entry with an empty part or an unknown role, or a name given twice.
    """
    parsed: list[TokenEntry] = []
    for entry in entries:
        parts = entry.split(":", 2)
        if len(parts) == 1:
            name, role_text, secret = "default", Role.ADMIN.value, parts[0]
        elif len(parts) == 3:
            name, role_text, secret = parts
        else:
            raise ConfigurationError("API token entries are name:role:secret or a bare secret")
        if not name or not secret or role_text not in {r.value for r in Role}:
            raise ConfigurationError(
                f"API token entry for {name or '?'!r}: needs a name, a role "
                f"({', '.join(r.value for r in Role)}) and a secret"
            )
        parsed.append(TokenEntry(Identity(name, Role(role_text)), secret.encode()))
    names = [e.identity.name for e in parsed]
    if len(set(names)) != len(names):
        raise ConfigurationError("API token entries must have distinct names")
    return parsed


def check_auth_configured(settings: Settings) -> None:
    """Refuse to run without tokens unless the development flag ``allow_no_auth`` is set.

    Raises
    ------
    ConfigurationError
        No token and no development flag, or a malformed token entry.
    """
    if not settings.api_tokens and not settings.allow_no_auth:
        raise ConfigurationError(
            "no API token configured: set LLMCTV_API_TOKENS (comma-separated name:role:secret), "
            "or for local development only LLMCTV_ALLOW_NO_AUTH=true (llmctv serve --dev)"
        )
    parse_token_entries(settings.api_tokens)


def identify(settings: Settings, presented: str | None) -> Identity | None:
    """The identity whose secret is ``presented`` (constant time over all entries), or None."""
    if not settings.api_tokens:
        return DEVELOPMENT_IDENTITY if settings.allow_no_auth else None
    given = (presented or "").encode()
    found: Identity | None = None
    for entry in parse_token_entries(settings.api_tokens):
        if hmac.compare_digest(given, entry.secret) and presented:
            found = entry.identity
    return found


def token_accepted(settings: Settings, presented: str | None) -> bool:
    """Whether ``presented`` is the secret of a configured identity."""
    return identify(settings, presented) is not None


async def current_identity(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Identity:
    """FastAPI dependency: the caller, or 401 ``unauthorized``."""
    settings: Settings = request.app.state.llmctv.settings
    token = credentials.credentials if credentials is not None else None
    identity = identify(settings, token)
    if identity is None:
        raise UnauthorizedError("a valid 'Authorization: Bearer <token>' header is required")
    return identity


def require_role(needed: Role) -> Callable[..., Awaitable[Identity]]:
    """A dependency: the caller if it has the rights of ``needed``, else 403 ``forbidden``."""

    async def dependency(identity: Annotated[Identity, Depends(current_identity)]) -> Identity:
        if not identity.may(needed):
            raise ForbiddenError(f"this needs the role {needed.value!r}")
        return identity

    return dependency


Authorized = Annotated[Identity, Depends(require_role(Role.SUBMITTER))]
"""Any authenticated caller (submitter or above)."""
Reviewer = Annotated[Identity, Depends(require_role(Role.REVIEWER))]
"""A caller who may decide reviews."""
Admin = Annotated[Identity, Depends(require_role(Role.ADMIN))]
"""An administrator (``/metrics``, ``/audit``)."""
