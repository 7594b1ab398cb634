"""Provider client for the device simulator (`relance simulator`), over its HTTP API."""

import httpx

from activities.providers.base import OutboundMessage, ProviderError, SendOutcome


class SimulatorProvider:
    name = "simulator"

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout)

    async def send(self, messages: list[OutboundMessage]) -> list[SendOutcome]:
        try:
            response = await self._client.post(
                "/v1/send", json={"messages": [m.model_dump(mode="json") for m in messages]}
            )
        except httpx.HTTPError as exc:
            raise ProviderError(f"simulator unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise ProviderError(f"simulator answered {response.status_code}: {response.text[:200]}")
        return [SendOutcome.model_validate(r) for r in response.json()["results"]]

    async def already_received(self, keys: list[str]) -> set[str] | None:
        try:
            response = await self._client.post("/v1/lookup", json={"keys": keys})
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ProviderError(f"simulator lookup failed: {exc!r}") from exc
        return set(response.json()["received"])

    async def aclose(self) -> None:
        await self._client.aclose()
