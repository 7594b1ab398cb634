"""Which provider reaches which device: per app, per device platform, with stored credentials.
A platform no provider is configured for goes to the app's default (the simulator)."""

from typing import Any

from pydantic import BaseModel, SecretStr

from relance.credentials import (
    ApnsCredentials,
    EngageLabCredentials,
    FcmCredentials,
    VapidCredentials,
)

# Provider -> the model its stored credentials must satisfy, and the platforms it can reach.
CREDENTIALS: dict[str, type[BaseModel]] = {
    "apns": ApnsCredentials,
    "fcm": FcmCredentials,
    "webpush": VapidCredentials,
    "engagelab": EngageLabCredentials,
}
PLATFORMS: dict[str, set[str]] = {
    "simulator": {"android", "ios", "web"},
    "fcm": {"android", "web"},
    "apns": {"ios"},
    "webpush": {"web"},
    "engagelab": {"android", "ios", "web"},
}


def route(platform: str, configured: dict[str, list[str]], default: str) -> str:
    """The provider for a device platform, given provider -> platforms configured for the app."""
    for provider, platforms in sorted(configured.items()):
        if platform in platforms:
            return provider
    return default


def revealed(credentials: BaseModel) -> dict[str, Any]:
    """What is stored: the credentials with their secrets in clear."""
    out = credentials.model_dump(mode="python")
    return {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in out.items()}


def redacted(provider: str, stored: dict[str, Any]) -> dict[str, Any]:
    """What the API shows: every secret replaced by asterisks."""
    model = CREDENTIALS.get(provider)
    if model is None:
        return {}
    return model.model_validate(stored).model_dump(mode="json")
