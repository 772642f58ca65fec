"""The public half of the webhook signing key, as a JWKS at fal's path (no auth).

Receivers fetch it once (and again when a signature stops verifying, in case the data dir and its
key were replaced) and verify deliveries as :mod:`server.webhooks` describes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from server.deps import SettingsDep
from server.webhooks import JWKS_PATH, KEY_FILE_NAME, jwks, load_or_create_signing_key

router = APIRouter(tags=["webhooks"])


@router.get(JWKS_PATH, summary="Webhook signature keys (JWKS, Ed25519)")
def webhook_jwks(request: Request, settings: SettingsDep) -> dict[str, Any]:
    dispatcher = getattr(request.app.state, "webhooks", None)
    if dispatcher is not None:
        return dispatcher.jwks()
    return jwks(load_or_create_signing_key(settings.data_dir / KEY_FILE_NAME).public_key())
