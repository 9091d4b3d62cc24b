"""Who may call: tenants by API key (SHA-256 of the bearer token), admins by the admin key."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from fastapi import Request

from features.errors import AuthError
from router.config import TenantConfig


def _bearer(request: Request) -> str:
    return request.headers.get("authorization", "").removeprefix("Bearer ").strip()


def require_admin(request: Request, expected_sha256: str | None, has_tenants: bool) -> None:
    """Admin routes need the admin key when the config sets one; without one they are open
    only on a service without tenants (local/dev), closed otherwise."""
    if expected_sha256 is None:
        if has_tenants:
            raise AuthError(
                "admin routes are closed: tenants are configured but admin_api_key_sha256 "
                "is not set"
            )
        return
    key = _bearer(request)
    if not hmac.compare_digest(hashlib.sha256(key.encode()).hexdigest(), expected_sha256):
        raise AuthError("authorization: missing or wrong admin API key")


def tenant_of(request: Request, tenants: Mapping[str, TenantConfig]) -> TenantConfig | None:
    """The caller's tenant (``tenants`` is keyed by the SHA-256 of the API key); None when no
    tenants are configured (open access, local/dev set-ups)."""
    if not tenants:
        return None
    key = _bearer(request)
    tenant = tenants.get(hashlib.sha256(key.encode()).hexdigest()) if key else None
    if tenant is None:
        raise AuthError("authorization: missing or unknown API key")
    return tenant
