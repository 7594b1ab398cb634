"""Each app's provider clients, built from its stored credentials and kept between sends
(a client holds its connections); rebuilt when the app's configuration changes."""

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from activities.providers.apns import ApnsProvider
from activities.providers.base import Provider
from activities.providers.engagelab import EngageLabProvider
from activities.providers.fcm import FcmProvider
from activities.providers.metered import metered
from activities.providers.webpush import WebPushProvider
from relance import ledger
from relance.credentials import (
    ApnsCredentials,
    EngageLabCredentials,
    FcmCredentials,
    VapidCredentials,
)
from relance.providers import route

Router = Callable[[str], Provider]


def build(name: str, credentials: dict[str, Any], options: dict[str, Any]) -> Provider:
    """A provider client from stored credentials; `options` (e.g. a base URL) come from the
    worker's configuration, never from the API."""
    if name == "fcm":
        return FcmProvider(FcmCredentials.model_validate(credentials), **options)
    if name == "apns":
        return ApnsProvider(ApnsCredentials.model_validate(credentials), **options)
    if name == "webpush":
        return WebPushProvider(VapidCredentials.model_validate(credentials), **options)
    if name == "engagelab":
        return EngageLabProvider(EngageLabCredentials.model_validate(credentials), **options)
    raise KeyError(f"no provider {name!r}")


class ProviderRegistry:
    def __init__(
        self,
        engine: Engine,
        defaults: dict[str, Provider],
        options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.engine = engine
        self.defaults = {name: metered(client) for name, client in defaults.items()}
        self.options = options or {}
        self._clients: dict[tuple[str, str], tuple[datetime, Provider]] = {}

    async def router(self, app_key: str) -> Router:
        """platform -> the provider client that reaches it for this app. Each stage reads which
        configurations the app has and since when (no credentials); a configuration's
        credentials are opened only when its client is new or the configuration changed."""
        default, versions = await asyncio.to_thread(ledger.provider_versions, self.engine, app_key)
        clients: dict[str, Provider] = {}
        for version in versions:
            key = (app_key, version.provider)
            cached = self._clients.get(key)
            if cached is None or cached[0] != version.updated_at:
                config = await asyncio.to_thread(
                    ledger.provider_config, self.engine, app_key, version.provider
                )
                if config is None:  # removed since the read above: as if never configured
                    continue
                if cached is not None:
                    await cached[1].aclose()
                client = build(
                    config.provider, config.credentials, self.options.get(config.provider, {})
                )
                self._clients[key] = (config.updated_at, metered(client))
            clients[version.provider] = self._clients[key][1]
        configured = {v.provider: list(v.platforms) for v in versions if v.provider in clients}

        def pick(platform: str) -> Provider:
            name = route(platform, configured, default)
            return clients.get(name) or self.defaults[name]

        return pick

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for _, client in clients.values():
            await client.aclose()
        for client in self.defaults.values():
            await client.aclose()
