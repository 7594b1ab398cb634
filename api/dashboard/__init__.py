"""The operator's dashboard at /dashboard: pushes, one push (timeline, funnel, lift,
callbacks), dead letters with a redeliver button, providers and schedules, as HTML pages.

It signs in with the app's key and secret (a login form, then a signed session cookie; see
session.py) and shows that app's data only: every page reads through the API's own route
functions and ledger functions, with the signed-in app in place of HTTP Basic. Nothing here
is in the OpenAPI document (include_in_schema=False): it is not part of the push API. No
script, no CDN: charts are inline SVG rendered here, the one stylesheet ships in the package."""

import inspect
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, ValidationError

from api.dashboard import charts
from api.dashboard.session import COOKIE, LIFETIME_SECONDS, Session, Signer, server_key
from api.deps import Context, get_context
from api.errors import ApiError
from api.routes import callbacks as callback_routes
from api.routes import providers as provider_routes
from api.routes import push as push_routes
from api.routes import schedules as schedule_routes
from relance import ledger
from relance.db import App, utcnow
from relance.models import PushRequest
from relance.providers import PLATFORMS
from relance.schedule import stage_offsets, stage_times
from relance.settings import Settings
from relance.states import JourneyState

router = APIRouter(prefix="/dashboard", include_in_schema=False)

REPORT_PATH = "/v4/push/{msg_id}/report"
LIST_SIZE = 50
STATIC = {"dashboard.css": "text/css; charset=utf-8"}

_env = Environment(
    loader=PackageLoader("api.dashboard", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _rate(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "—"


_env.filters["when"] = _when
_env.globals["rate"] = _rate


def install(app: FastAPI, settings: Settings) -> None:
    app.state.dashboard_signer = Signer(server_key(settings))
    app.include_router(router)


def _signer(request: Request) -> Signer:
    signer: Signer = request.app.state.dashboard_signer
    return signer


def _page(
    request: Request, template: str, status: int = 200, session: Session | None = None, **data: Any
) -> HTMLResponse:
    csrf = _signer(request).csrf(session) if session is not None else ""
    html = _env.get_template(template).render(
        request=request, session=session, csrf=csrf, path=request.url.path, **data
    )
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            # Nothing from elsewhere: no script at all, styles and images from here only.
            "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' "
            "data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store",
        },
    )


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/dashboard/login?next={quote(target)}", status_code=303)


async def _signed_in(request: Request) -> tuple[App, Session, Context] | None:
    """The app of the request's session cookie, if it is valid, unexpired, and the app's
    secret has not changed since it was issued."""
    ctx = get_context(request)
    signer = _signer(request)
    session = signer.read(request.cookies.get(COOKIE))
    if session is None:
        return None
    try:
        app = await run_in_threadpool(ledger.get_app, ctx.engine, session.app_key)
    except ledger.NotFound:
        return None
    if signer.fingerprint(app.secret_hash) != session.fingerprint:
        return None
    return app, session, ctx


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (the only kind these forms send), first value of each field."""
    body = await request.body()
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items()}


def _safe_next(target: str | None) -> str:
    """Only a dashboard path: never an open redirect to another site."""
    if target and target.startswith("/dashboard") and "//" not in target and "\\" not in target:
        return target
    return "/dashboard/pushes"


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    body = resources.files("api.dashboard").joinpath("static", name).read_bytes()
    return Response(body, media_type=STATIC[name], headers={"Cache-Control": "max-age=3600"})


@router.get("")
@router.get("/")
async def home(request: Request) -> Response:
    return RedirectResponse("/dashboard/pushes", status_code=303)


@router.get("/login")
async def login_page(request: Request, next: str | None = None) -> Response:
    return _page(request, "login.html", next=_safe_next(next), error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    ctx = get_context(request)
    form = await _form(request)
    app_key, secret = form.get("app_key", ""), form.get("master_secret", "")
    target = _safe_next(form.get("next"))
    app = (
        await run_in_threadpool(ledger.authenticate, ctx.engine, app_key, secret)
        if app_key and secret and len(app_key) <= 64 and len(secret) <= 256
        else None
    )
    if app is None:
        error = "Unknown app key or wrong master secret."
        return _page(request, "login.html", status=401, next=target, error=error)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        _signer(request).issue(app.app_key, app.secret_hash),
        max_age=LIFETIME_SECONDS,
        path="/dashboard",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    found = await _signed_in(request)
    form = await _form(request)
    if found is not None and not _signer(request).check_csrf(found[1], form.get("csrf")):
        return Response("invalid CSRF token", status_code=403, media_type="text/plain")
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


def _parse_day(value: str | None, field: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{field}: expected a date YYYY-MM-DD") from None


@router.get("/pushes")
async def pushes_page(
    request: Request,
    state: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> Response:
    found = await _signed_in(request)
    if found is None:
        return _to_login(request)
    app, session, ctx = found
    states = [s.value for s in JourneyState]
    error, rows = None, []
    try:
        if state and state not in states:
            raise ValueError(f"state: expected one of {', '.join(states)}")
        day_from, day_to = _parse_day(since, "since"), _parse_day(until, "until")
    except ValueError as exc:
        error = str(exc)
    if error is None:
        start = datetime.combine(day_from, datetime.min.time(), UTC) if day_from else None
        # `until` is a day included whole.
        end = datetime.combine(day_to, datetime.min.time(), UTC) + timedelta(1) if day_to else None
        pushes = await run_in_threadpool(
            ledger.list_pushes, ctx.engine, app.app_key, state or None, start, end, LIST_SIZE
        )
        stats = await run_in_threadpool(
            ledger.message_stats, ctx.engine, app.app_key, [p.msg_id for p in pushes]
        )
        for p in pushes:
            lift = None
            if _has_holdout(p.request):
                report = await _report(request, p.msg_id, app, ctx)
                lift = charts.intervals_in(report) if report is not None else None
            rows.append({"push": p, "stats": stats.get(p.msg_id), "lift": lift})
    return _page(
        request,
        "pushes.html",
        status=400 if error else 200,
        session=session,
        app=app,
        rows=rows,
        states=states,
        state=state or "",
        since=since or "",
        until=until or "",
        error=error,
    )


def _has_holdout(request: dict[str, Any]) -> bool:
    resend = request.get("resend")
    return isinstance(resend, dict) and bool(resend.get("holdout"))


async def _report(request: Request, msg_id: str, app: App, ctx: Context) -> Any | None:
    """The push's report (holdout lift and variants) from the API's own report route, when
    this build has one; None otherwise. Called as the route function, with the signed-in app."""
    for route in request.app.router.routes:
        if getattr(route, "path", None) == REPORT_PATH and "GET" in getattr(route, "methods", ()):
            endpoint = route.endpoint
            break
    else:
        return None
    kwargs: dict[str, Any] = {}
    for name, param in inspect.signature(endpoint).parameters.items():
        if name == "msg_id":
            kwargs[name] = msg_id
        elif param.annotation is App or "AppDep" in str(param.annotation) or name == "app":
            kwargs[name] = app
        elif param.annotation is Context or name == "ctx":
            kwargs[name] = ctx
        elif param.default is not inspect.Parameter.empty:
            kwargs[name] = getattr(param.default, "default", param.default)
    try:
        result = endpoint(**kwargs)
        if inspect.isawaitable(result):
            result = await result
    except (ApiError, ledger.LedgerError):
        return None
    return result.model_dump(mode="json") if isinstance(result, BaseModel) else result


def _not_found(request: Request, session: Session, what: str) -> HTMLResponse:
    return _page(request, "not_found.html", status=404, session=session, what=what)


@router.get("/pushes/{msg_id}")
async def push_page(request: Request, msg_id: str) -> Response:
    found = await _signed_in(request)
    if found is None:
        return _to_login(request)
    app, session, ctx = found
    try:
        status = await push_routes.get_push(msg_id, app, ctx)
    except ledger.NotFound:
        return _not_found(request, session, f"push {msg_id}")
    stored = await run_in_threadpool(ledger.get_push, ctx.engine, app.app_key, msg_id)
    slots = await run_in_threadpool(ledger.stage_slots, ctx.engine, msg_id)
    cb = await run_in_threadpool(ledger.push_callbacks, ctx.engine, app.app_key, msg_id)
    planned = _planned(stored.request, stored.created_at)
    marks = [
        charts.Mark(i, "planned", t, t, f"stage {i} planned {_when(t)}")
        for i, t in enumerate(planned)
    ]
    for slot in slots:
        if slot.first_sent_at is not None and slot.last_sent_at is not None:
            kind = "held" if slot.held_until is not None else "sent"
            marks.append(
                charts.Mark(
                    slot.stage,
                    kind,
                    slot.first_sent_at,
                    slot.last_sent_at,
                    f"stage {slot.stage}: {slot.sent} sent {_when(slot.first_sent_at)}"
                    f" – {_when(slot.last_sent_at)}",
                )
            )
        elif slot.held_until is not None:
            marks.append(
                charts.Mark(
                    slot.stage,
                    "held",
                    slot.held_until,
                    slot.held_until,
                    f"stage {slot.stage}: {slot.deliveries} held until {_when(slot.held_until)}",
                )
            )
    report = await _report(request, msg_id, app, ctx)
    intervals = charts.intervals_in(report) if report is not None else []
    return _page(
        request,
        "push.html",
        session=session,
        app=app,
        info=status,
        stored=stored,
        planned=planned,
        slots=slots,
        callbacks=cb,
        timeline=charts.timeline_chart(marks, utcnow()),
        funnel_chart=charts.funnel_chart(status.funnel.stages),
        report=report,
        has_report_route=await _has_report_route(request),
        lift_chart=charts.lift_chart(intervals),
        intervals=intervals,
        holdout=_has_holdout(stored.request),
    )


async def _has_report_route(request: Request) -> bool:
    return any(getattr(r, "path", None) == REPORT_PATH for r in request.app.router.routes)


def _planned(request: dict[str, Any], created_at: datetime) -> list[datetime]:
    """Each stage's planned time: stage 0 when the push was made, then as the API returned
    them (relance.schedule)."""
    try:
        parsed = PushRequest.model_validate(request)
    except ValidationError:
        return [created_at]
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return stage_times(created_at, stage_offsets(parsed.resend))


@router.get("/dead")
async def dead_page(request: Request, redelivered: int | None = None) -> Response:
    found = await _signed_in(request)
    if found is None:
        return _to_login(request)
    app, session, ctx = found
    page = await callback_routes.list_dead(app, ctx, cursor=0, limit=100)
    return _page(
        request,
        "dead.html",
        session=session,
        app=app,
        batches=page.batches,
        more=page.next_cursor is not None,
        redelivered=redelivered,
    )


@router.post("/dead/{batch_id}/redeliver")
async def redeliver(request: Request, batch_id: int) -> Response:
    found = await _signed_in(request)
    if found is None:
        return Response("sign in first", status_code=401, media_type="text/plain")
    app, session, ctx = found
    form = await _form(request)
    if not _signer(request).check_csrf(session, form.get("csrf")):
        return Response("invalid CSRF token", status_code=403, media_type="text/plain")
    if not 1 <= batch_id < 2**63:
        return _not_found(request, session, f"dead callback batch {batch_id}")
    try:
        await callback_routes.redeliver(batch_id, app, ctx)
    except ApiError as exc:
        if exc.status != 404:
            raise
        return _not_found(request, session, f"dead callback batch {batch_id}")
    return RedirectResponse(f"/dashboard/dead?redelivered={batch_id}", status_code=303)


@router.get("/providers")
async def providers_page(request: Request) -> Response:
    found = await _signed_in(request)
    if found is None:
        return _to_login(request)
    app, session, ctx = found
    configured = await provider_routes.list_providers(app, ctx)
    by_platform = {
        platform: next(
            (p.provider for p in configured.providers if platform in p.platforms),
            None,
        )
        for platform in sorted(set().union(*PLATFORMS.values()))
    }
    now = utcnow()
    errors = await run_in_threadpool(
        ledger.recent_send_errors, ctx.engine, app.app_key, now - timedelta(days=7)
    )
    invalidated = await run_in_threadpool(
        ledger.invalidated_tokens, ctx.engine, app.app_key, now - timedelta(hours=24)
    )
    return _page(
        request,
        "providers.html",
        session=session,
        app=app,
        configured=configured,
        by_platform=by_platform,
        errors=errors,
        invalidated=invalidated,
    )


@router.get("/schedules")
async def schedules_page(request: Request, page: int = 1) -> Response:
    found = await _signed_in(request)
    if found is None:
        return _to_login(request)
    app, session, ctx = found
    listed = await schedule_routes.list_schedules(app, ctx, page=max(1, min(page, 10**6)))
    return _page(request, "schedules.html", session=session, app=app, listed=listed)
