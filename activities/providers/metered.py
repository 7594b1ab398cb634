"""A provider client that counts what it sends: every outcome by provider, and how long each
call took. The registry hands these out, so every send path is measured in one place."""

import time

from activities.providers.base import OutboundMessage, Provider, SendOutcome
from relance import metrics


def outcome_of(outcome: SendOutcome) -> str:
    if outcome.ok:
        return "ok"
    if outcome.token_invalid:
        return "token_invalid"
    if outcome.config_error:
        return "config_error"
    if outcome.retry_after is not None:
        return "retry_later"
    return "failed"


class MeteredProvider:
    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name = inner.name

    async def send(self, messages: list[OutboundMessage]) -> list[SendOutcome]:
        started = time.perf_counter()
        try:
            outcomes = await self.inner.send(messages)
        except Exception:
            metrics.count_sends(self.name, ["error"] * len(messages))
            raise
        finally:
            metrics.PROVIDER_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        metrics.count_sends(self.name, map(outcome_of, outcomes))
        return outcomes

    async def already_received(self, keys: list[str]) -> set[str] | None:
        return await self.inner.already_received(keys)

    async def aclose(self) -> None:
        await self.inner.aclose()


def metered(provider: Provider) -> Provider:
    return provider if isinstance(provider, MeteredProvider) else MeteredProvider(provider)
