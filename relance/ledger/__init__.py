"""The ledger: every read and write of apps, devices, pushes, recipients, deliveries, status
events and the callback outbox, one module per aggregate.

The ledger is the source of truth; the workflow only holds counters. Both the API and the
activities call these functions (synchronous: callers run them in a thread). The names below are
the ledger's public surface, so callers write `ledger.accept_push(...)` wherever it lives."""

from relance.ledger._base import LedgerError, LimitExceeded, NotFound
from relance.ledger.apps import (
    authenticate,
    create_app,
    get_app,
    policy_of,
    set_callbacks,
    set_policy,
)
from relance.ledger.audience import (
    audience_query,
    count_audience,
    finish_materialise,
    has_audience,
    materialise_page,
    valid_registration_ids,
)
from relance.ledger.devices import (
    DeviceInfo,
    DeviceStatus,
    delete_device,
    device_status,
    get_device,
    invalidate_device,
    register_tokens,
    set_device,
    upsert_devices,
)
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
    unfinished_pushes,
)
from relance.ledger.report import report
from relance.ledger.sending import (
    Outbound,
    Page,
    SendOutcomeRow,
    claim_batch,
    record_outcomes,
    select_resend_audience,
    stage_result,
)
from relance.ledger.statistics import (
    DeviceLifecycle,
    MessageStats,
    message_lifecycle,
    message_stats,
)
from relance.ledger.tags import (
    Limits,
    alias_devices,
    count_tags,
    delete_alias,
    delete_tag,
    device_has_tag,
    list_tags,
    quota,
    set_tag,
)

__all__ = [
    "DeviceInfo",
    "DeviceStatus",
    "Limits",
    "alias_devices",
    "count_tags",
    "delete_alias",
    "delete_device",
    "delete_tag",
    "device_has_tag",
    "device_status",
    "get_device",
    "list_tags",
    "quota",
    "register_tokens",
    "set_device",
    "set_tag",
    "Accepted",
    "DeviceLifecycle",
    "MessageStats",
    "IngestResult",
    "LedgerError",
    "LimitExceeded",
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
    "report",
    "get_app",
    "get_push",
    "has_audience",
    "ingest_events",
    "invalidate_device",
    "list_events",
    "materialise_page",
    "message_lifecycle",
    "message_stats",
    "new_msg_id",
    "claim_batch",
    "policy_of",
    "progress",
    "provider_configs",
    "record_outcomes",
    "select_resend_audience",
    "set_callbacks",
    "set_policy",
    "set_provider",
    "set_state",
    "unfinished_pushes",
    "stage_result",
    "upsert_devices",
    "valid_registration_ids",
]
