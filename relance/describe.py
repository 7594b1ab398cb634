"""What a journey says about itself in the Temporal UI: the one-line summary of the list view,
the Markdown details of its page (content, schedule, policies), the live funnel, and the labels
of its timers and activities. Pure text from models: no I/O, no clock, so the workflow may call
it. Nothing here prints a secret or a device's identity: audiences are counts, tags and names."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from relance.durations import format_duration
from relance.models import Audience, PushRequest, StageNotification, TriggerCondition
from relance.timing import Timing

# Temporal keeps a summary short (the list view shows one line): what the UI shows in full.
SUMMARY_MAX = 200
TEXT_MAX = 120


def short_id(msg_id: str) -> str:
    """`1795429543454486250` -> `1795…` (the full id is the workflow id beside it)."""
    return msg_id if len(msg_id) <= 8 else msg_id[:4] + "…"


def condition_text(condition: TriggerCondition | str) -> str:
    return str(condition).replace("_", " ")


def duration_text(seconds: float) -> str:
    return format_duration(timedelta(seconds=seconds))


def at_text(at: datetime) -> str:
    """18:00Z, with seconds when they matter (demo journeys are seconds long)."""
    return at.strftime("%H:%M:%SZ" if at.second else "%H:%MZ")


def audience_text(to: "Audience | str") -> str:
    """How many devices or which tags; never the registration ids themselves."""
    if not isinstance(to, Audience):
        return "all devices"
    if to.registration_id is not None:
        n = len(to.registration_id)
        return f"{n} device" + ("s" if n != 1 else "")
    if to.alias is not None:
        n = len(to.alias)
        return f"{n} alias" + ("es" if n != 1 else "")
    parts = []
    if to.tag:
        parts.append(("tag " if len(to.tag) == 1 else "tags ") + " or ".join(to.tag))
    if to.tag_and:
        parts.append("all of " + ", ".join(to.tag_and))
    if to.tag_not:
        parts.append("not " + ", ".join(to.tag_not))
    return " · ".join(parts) if parts else "tagged devices"


def journey_summary(msg_id: str, request: PushRequest, app_name: str | None = None) -> str:
    """`Push 1795… · 200 devices · not clicked within 2h · 2 resends · news app`."""
    parts = [f"Push {short_id(msg_id)}", audience_text(request.to)]
    resend = request.resend
    if resend is None:
        parts.append("no resend")
    else:
        within = format_duration(resend.trigger.within)
        parts.append(f"{condition_text(resend.trigger.condition)} within {within}")
        n = len(resend.stages)
        parts.append(f"{n} resend" + ("s" if n != 1 else ""))
    if app_name:
        parts.append(app_name)
    text = " · ".join(parts)
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TEXT_MAX else text[: TEXT_MAX - 1] + "…"


def _cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    return _clip(text).replace("|", "\\|")


def _first_content(request: PushRequest) -> str:
    body = request.body
    n = body.notification
    if n is not None:
        sections = [s for s in (n.android, n.ios, n.web) if s is not None]
        title = next((s.title for s in sections if s.title), None)
        alert = n.alert or next((s.alert for s in sections if s.alert), None) or ""
        return f"**{_cell(title)}** {_cell(alert)}" if title else _cell(alert)
    if body.message is not None:
        content = body.message.msg_content
        return "message: " + _cell(content if isinstance(content, str) else "(JSON data)")
    return ""


def stage_change_text(n: StageNotification) -> str:
    """What a resend stage changes, as one line."""
    said = []
    if n.title is not None:
        said.append(f"title **{_cell(n.title)}**")
    if n.alert is not None:
        said.append(f"alert “{_cell(n.alert)}”")
    if n.template is not None:
        said.append(f"template `{_cell(n.template)}`")
    if n.append is not None:
        said.append(f"append “{_cell(n.append)}”")
    if n.extras:
        said.append("extras " + ", ".join(f"`{_cell(k)}`" for k in n.extras))
    return "; ".join(said) if said else "same content"


def journey_details(
    msg_id: str,
    request: PushRequest,
    timing: Timing | None = None,
    app_name: str | None = None,
) -> str:
    """The journey's page: audience, each stage's content and time, and the policies."""
    lines = [f"### Push `{msg_id}`", ""]
    lines.append(f"- **Audience**: {audience_text(request.to)}")
    if app_name:
        lines.append(f"- **App**: {_cell(app_name)}")
    platform = request.body.platform
    lines.append(
        f"- **Platform**: {platform if isinstance(platform, str) else ', '.join(platform)}"
    )
    resend = request.resend
    lines += ["", "| stage | when | content |", "|---|---|---|"]
    lines.append(f"| 0 | at once | {_first_content(request)} |")
    if resend is not None:
        within = resend.trigger.within
        for i, stage in enumerate(resend.stages, start=1):
            when = f"send + {format_duration(within + stage.after)}"
            lines.append(f"| {i} (resend) | {when} | {stage_change_text(stage.notification)} |")
    lines += ["", "**Policies**", ""]
    if resend is None:
        lines.append("- no resend: stage 0 only")
    else:
        cond = condition_text(resend.trigger.condition)
        lines.append(
            f"- trigger: resend to whoever is still **{cond}** when the window of "
            f"{format_duration(resend.trigger.within)} closes; each stage's `after` counts "
            "from that close"
        )
    lines += [f"- {rule}" for rule in timing_rules(timing)]
    return "\n".join(lines)


def timing_rules(timing: Timing | None) -> list[str]:
    if timing is None:
        return ["no quiet hours, local time, send_at, frequency cap or throttle"]
    rules = []
    if timing.send_at is not None:
        rules.append(f"send at {timing.send_at.isoformat()}")
    if timing.local_time is not None:
        rules.append(f"local time {timing.local_time.strftime('%H:%M')} (device zones)")
    if timing.quiet_hours is not None:
        q = timing.quiet_hours
        rules.append(
            f"quiet hours {q.start.strftime('%H:%M')}–{q.end.strftime('%H:%M')} local time "
            f"(default zone {timing.zone})"
        )
    for cap in timing.caps:
        rules.append(f"frequency cap: at most {cap.max} per {format_duration(cap.per)}")
    if not timing.counted:
        rules.append("transactional: not capped, not counted")
    if timing.throttle_per_minute:
        rules.append(f"throttle: {timing.throttle_per_minute} a minute")
    if timing.app_throttle_per_minute:
        rules.append(f"app throttle: {timing.app_throttle_per_minute} a minute")
    return rules or ["default timing"]


@dataclass(frozen=True)
class FunnelRow:
    """One stage as the live funnel shows it; None: not known (yet) to the journey."""

    stage: int
    targeted: int
    sent: int
    failed: int = 0
    skipped: int = 0
    delivered: int | None = None
    clicked: int | None = None
    held_out: int | None = None
    deferred: int | None = None


@dataclass(frozen=True)
class Totals:
    """Recipient-level counts of the whole push (the ledger's, as the journey last heard)."""

    recipients: int = 0
    delivered: int = 0
    displayed: int = 0
    clicked: int = 0
    failed: int = 0


def funnel_details(
    state: str,
    rows: Sequence[FunnelRow],
    totals: Totals,
    next_stage: int | None = None,
    next_at: datetime | None = None,
    error: str | None = None,
) -> str:
    """The live Markdown funnel: state, next stage, then one row per stage sent so far."""
    head = f"**{state}**"
    if next_stage is not None and next_at is not None:
        head += f" · next: stage {next_stage} at {at_text(next_at)}"
    lines = [head, ""]
    if error:
        lines += [f"> {_cell(error)}", ""]
    cols = ["targeted", "sent", "failed", "skipped", "delivered", "clicked", "held out", "deferred"]
    values = [
        [r.targeted, r.sent, r.failed, r.skipped, r.delivered, r.clicked, r.held_out, r.deferred]
        for r in rows
    ]
    # A column nobody knows yet (per-stage clicks before the end, holdouts) is left out.
    keep = [i for i in range(len(cols)) if any(v[i] is not None for v in values)] or [0, 1]
    lines.append("| stage | " + " | ".join(cols[i] for i in keep) + " |")
    lines.append("|---" * (len(keep) + 1) + "|")
    for r, v in zip(rows, values, strict=True):
        cells = ["–" if v[i] is None else str(v[i]) for i in keep]
        lines.append(f"| {r.stage} | " + " | ".join(cells) + " |")
    t = totals
    lines += [
        "",
        f"**All stages**: {t.recipients} recipients · {t.delivered} delivered · "
        f"{t.displayed} displayed · {t.clicked} clicked · {t.failed} failed",
    ]
    return "\n".join(lines)


# Labels of timers and activities (the Temporal UI's timeline shows them on each event).


def send_summary(stage: int, condition: TriggerCondition | str | None) -> str:
    if stage == 0:
        return "send stage 0: first send"
    cond = str(condition) if condition is not None else "resend"
    return f"send stage {stage}: {cond}, resend content"


def wait_summary(
    stage: int,
    at: datetime,
    condition: TriggerCondition | str | None,
    within_seconds: float,
    first: bool,
) -> str:
    """The wait before a resend stage; the first one holds the trigger window."""
    until = f"until stage {stage} (resend) at {at_text(at)}"
    if first and condition is not None and within_seconds > 0:
        window = f"{condition_text(condition)} within {duration_text(within_seconds)}"
        return f"trigger window: {window}, then {until}"
    return until


def slot_summary(stage: int, at: datetime, held: bool) -> str:
    why = " (held: quiet hours, local time or send_at)" if held else ""
    return f"until stage {stage} slot at {at_text(at)}{why}"


@dataclass(frozen=True)
class JourneyLabels:
    """A journey's static summary and details: the same whoever starts it (the API, the repair
    loop, a schedule's firing)."""

    summary: str
    details: str


def journey_labels(
    msg_id: str, request: PushRequest, timing: Timing | None = None, app_name: str | None = None
) -> JourneyLabels:
    return JourneyLabels(
        journey_summary(msg_id, request, app_name),
        journey_details(msg_id, request, timing, app_name),
    )
