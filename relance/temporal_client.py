"""Connecting to Temporal: one place for the address, the namespace and the data converter that
the API, the worker and the CLI share."""

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime

from relance.settings import Settings


async def connect_temporal(settings: Settings, runtime: Runtime | None = None) -> Client:
    """`runtime`: one with a metrics exporter (the worker's), else the SDK's default."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        runtime=runtime,
    )
