"""The ledger: every read and write of apps, devices, pushes, recipients, deliveries, status
events and the callback outbox, one module per aggregate.

The ledger is the source of truth; the workflow only holds counters. Both the API and the
activities call these functions (synchronous: callers run them in a thread). The names below are
the ledger's public surface, so callers write `ledger.accept_push(...)` wherever it lives."""

from relance.ledger._base import LedgerError, NotFound
from relance.ledger.apps import authenticate, create_app, get_app, set_callbacks
from relance.ledger.audience import (
    audience_query,
    count_audience,
    finish_materialise,
    has_audience,
    materialise_page,
)
from relance.ledger.devices import invalidate_device, upsert_devices
from relance.ledger.events import IngestResult, event_key, ingest_events, list_events
from relance.ledger.funnel import funnel, progress
from relance.ledger.providers import delete_provider, provider_configs, set_provider
from relance.ledger.pushes import (
    Accepted,
    accept_push,
    find_push_by_request,
    forget_push,
    get_push,
    new_msg_id,
    set_state,
)
from relance.ledger.schedules import (
    app_timezone,
    create_schedule,
    delete_schedule,
    get_schedule,
    list_firings,
    list_schedules,
    record_firing,
    update_schedule,
)
from relance.ledger.sending import (
    Outbound,
    Page,
    SendOutcomeRow,
    claim_batch,
    record_outcomes,
    select_resend_audience,
    stage_result,
)

__all__ = [
    "update_schedule",
    "record_firing",
    "list_schedules",
    "list_firings",
    "get_schedule",
    "delete_schedule",
    "create_schedule",
    "app_timezone",
    "Accepted",
    "IngestResult",
    "LedgerError",
    "NotFound",
    "Outbound",
    "Page",
    "SendOutcomeRow",
    "accept_push",
    "audience_query",
    "authenticate",
    "count_audience",
    "create_app",
    "delete_provider",
    "event_key",
    "find_push_by_request",
    "finish_materialise",
    "forget_push",
    "funnel",
    "get_app",
    "get_push",
    "has_audience",
    "ingest_events",
    "invalidate_device",
    "list_events",
    "materialise_page",
    "new_msg_id",
    "claim_batch",
    "progress",
    "provider_configs",
    "record_outcomes",
    "select_resend_audience",
    "set_callbacks",
    "set_provider",
    "set_state",
    "stage_result",
    "upsert_devices",
]
