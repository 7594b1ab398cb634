"""The worker: runs PushJourney and its activities against any Temporal address."""

import asyncio
import logging

from temporalio.client import Client
from temporalio.worker import Worker

from activities.journey import JourneyActivities
from activities.providers import Provider, SimulatorProvider
from relance.db import create_tables, make_engine
from relance.settings import Settings, get_settings
from workflows.push_journey import PushJourney


def build_worker(
    client: Client, settings: Settings, providers: dict[str, Provider] | None = None
) -> Worker:
    engine = make_engine(settings.database_url)
    create_tables(engine)
    providers = providers or {"simulator": SimulatorProvider(settings.simulator_url)}
    journey = JourneyActivities(engine, providers, settings.send_batch_size)
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[PushJourney],
        activities=[journey.send_stage, journey.finish_journey],
    )


async def main(settings: Settings | None = None) -> None:
    from api.main import connect_temporal

    settings = settings or get_settings()
    client: Client = await connect_temporal(settings)
    logging.getLogger("relance.worker").info(
        "worker on task queue %r at %s", settings.task_queue, settings.temporal_address
    )
    await build_worker(client, settings).run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main())
