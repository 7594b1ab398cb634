"""Errors in EngageLab's shape, `{"error": {"code", "message"}}`, with field details alongside,
so EngageLab's SDKs raise a readable error."""

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from relance.ledger import LedgerError, NotFound
from relance.ledger._base import LimitExceeded

# Codes follow EngageLab's where one exists: an invalid parameter is HTTP 400 with code 21003
# (as EngageLab answers, and its SDKs expect), 21004 authentication failed, 23008 over the rate
# limit; relance adds 21404 not found, 21409 conflict, 21503 unavailable, and 21501 for what
# relance does not support (answered with HTTP 404: see api/routes/unsupported.py).
INVALID = 400
NOT_SUPPORTED = 21501
CODES = {
    400: 21003,
    401: 21004,
    404: 21404,
    405: 21001,
    409: 21409,
    413: 21413,
    422: 21003,
    429: 23008,
    503: 21503,
}


class ApiError(Exception):
    """An error answer: HTTP `status`, EngageLab's code for it (or `code`), the field at fault,
    and extra response headers."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        *,
        code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.code, self.headers = code, headers


def error_body(
    status: int,
    message: str,
    details: list[dict[str, Any]] | None = None,
    code: int | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "error": {"code": code or CODES.get(status, 21000 + status), "message": message}
    }
    if details:
        body["details"] = details
    return body


def _field(loc: tuple[Any, ...]) -> str:
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path") else loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-after", "function-before", "literal[", "list[")):
            continue  # pydantic's union branch names say nothing to a user
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


_NESTED = re.compile(r"^(?P<path>[A-Za-z_][\w.\[\]]*): (?P<message>.+)$", re.S)


def located(field: str, err: dict[str, Any]) -> tuple[str, str]:
    """(field, message); a model-level check that names a sub-field ("stages[1].after: …")
    is reported at that sub-field."""
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    nested = _NESTED.match(message)
    if nested:
        path = nested["path"]
        return (f"{field}.{path}" if field != "body" else path), nested["message"]
    return field, message


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            e = next(e for e in errors if e.get("type") == "json_invalid")
            ctx = e.get("ctx", {}).get("error", "")
            return JSONResponse(
                error_body(
                    400,
                    f"body: expected valid JSON ({ctx})".replace(" ()", ""),
                    [{"field": "body", "message": "expected valid JSON"}],
                ),
                status_code=400,
            )
        found = [(located(_field(tuple(e.get("loc", ()))), e), e.get("type")) for e in errors]
        fields = [f for (f, _), _ in found]
        details, seen = [], set()
        for (field, message), kind in found:
            others = sum(f == field or f.startswith((f"{field}.", f"{field}[")) for f in fields)
            if kind == "literal_error" and others > 1:
                continue  # `to` may be "all" or an object: report what is wrong in the object
            if (field, message) not in seen:
                seen.add((field, message))
                details.append({"field": field, "message": message})
        first = details[0]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        return JSONResponse(
            error_body(INVALID, f"{first['field']}: {first['message']}{more}", details),
            status_code=INVALID,
        )

    @app.exception_handler(LedgerError)
    async def _ledger(_: Request, exc: LedgerError) -> JSONResponse:
        # The ledger says what is wrong; the API says what that means in HTTP.
        status = 404 if isinstance(exc, NotFound) else INVALID
        body = error_body(
            status, f"{exc.field}: {exc.message}", [{"field": exc.field, "message": exc.message}]
        )
        if isinstance(exc, LimitExceeded):  # a limit of its own code (relance.ledger.tags)
            body["error"]["code"] = exc.code
        return JSONResponse(body, status_code=status)

    @app.exception_handler(OperationalError)
    async def _ledger_down(_: Request, exc: OperationalError) -> JSONResponse:
        # The ledger cannot write (disk full) or cannot be reached (PostgreSQL restarting): the
        # request's transaction was rolled back, so nothing of it is half-done. Retry later.
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else "unavailable"
        return JSONResponse(
            error_body(503, f"ledger: unavailable ({reason}); retry the same request"),
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        details = [{"field": exc.field, "message": exc.message}] if exc.field else None
        headers = dict(exc.headers or {})
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="relance"'
        return JSONResponse(
            error_body(exc.status, exc.message, details, exc.code), exc.status, headers=headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 404 and message == "Not Found":
            message = f"path: no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method: {request.method} is not allowed on {request.url.path}"
            # Starlette's Allow names the methods of the first route that matched the path;
            # a path served by several routes (GET and DELETE /v4/push/{msg_id}) allows all.
            headers["Allow"] = ", ".join(allowed_methods(request))
        return JSONResponse(
            error_body(exc.status_code, message), status_code=exc.status_code, headers=headers
        )


def allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document gives this request's path (HEAD with GET, as Starlette
    serves it): what the path answers, as documented."""
    methods: set[str] = set()
    for template, item in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(request.url.path):
            methods |= {m.upper() for m in item}
    if "GET" in methods:
        methods.add("HEAD")
    order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return sorted(methods, key=lambda m: order.index(m) if m in order else len(order))


class ErrorDetail(BaseModel):
    code: int = Field(description="EngageLab's error code (21003 invalid parameter, ...).")
    message: str


class FieldError(BaseModel):
    field: str
    message: str


class ErrorOut(BaseModel):
    """Every error answer: EngageLab's `{"error": {"code", "message"}}`, with the fields at
    fault in `details`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {"code": 21003, "message": "to: Field required"},
                    "details": [{"field": "to", "message": "Field required"}],
                }
            ]
        }
    )

    error: ErrorDetail
    details: list[FieldError] | None = None


_RATE_HEADERS = {
    "X-Rate-Limit-Limit": "Requests this app may make per window (one second).",
    "X-Rate-Limit-Remaining": "Requests left in the current window.",
    "X-Rate-Limit-Reset": "Seconds until the current window ends and the count starts again.",
}
ERROR_RESPONSES: dict[int, str] = {
    400: "Invalid parameter (code 21003); `details` names each field at fault.",
    401: "Missing or wrong HTTP Basic appKey:masterSecret (code 21004).",
    404: "No such resource for this app (code 21404), or not supported by relance (21501).",
    409: "The resource's state does not allow it (code 21409), e.g. the journey already ended.",
    413: "The body is larger than RELANCE_MAX_BODY_BYTES (code 21413).",
    429: "Over the app's request rate (code 23008); retry after X-Rate-Limit-Reset seconds.",
    503: "Temporal or the ledger is not reachable for now (code 21503); retry the same request.",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's own error answers beyond those every route has (see `document_errors`), e.g.
    `responses=errors.responses(409)`; described and shaped when the document is built."""
    return {status: {"description": ERROR_RESPONSES[status]} for status in statuses}


def document_errors(app: FastAPI) -> None:
    """The OpenAPI document lists relance's error answers, in EngageLab's shape, for every route,
    in place of FastAPI's 422 (relance answers invalid input with 400): 400, 404 and 503
    everywhere, 413 where there is a body, 401 and 429 on the routes that authenticate, and
    what a route declares itself (`responses(409)`). Applied when the document is first built,
    so routers included later are covered too: schemathesis checks every answer against it."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        error = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(error.pop("$defs", {}))
        components["ErrorOut"] = error
        for key in ("HTTPValidationError", "ValidationError"):
            components.pop(key, None)
        ref = {"$ref": "#/components/schemas/ErrorOut"}
        rate_headers = {
            name: {"description": text, "schema": {"type": "integer"}}
            for name, text in _RATE_HEADERS.items()
        }
        for item in schema.get("paths", {}).values():
            for op in item.values():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                counted = bool(op.get("security"))  # authenticated: rate-limited too
                statuses = [400, 404, 503] + ([401, 429] if counted else [])
                statuses += [413] if "requestBody" in op else []
                for status in statuses:
                    responses.setdefault(str(status), {"description": ERROR_RESPONSES[status]})
                for status, response in responses.items():
                    if status[0] in "45" and "content" not in response:
                        if int(status) in ERROR_RESPONSES:
                            response["description"] = ERROR_RESPONSES[int(status)]
                        response["content"] = {"application/json": {"schema": ref}}
                for status, response in responses.items():
                    if counted and status not in ("400", "401"):  # counted after auth
                        response.setdefault("headers", {}).update(rate_headers)
        app.openapi_schema = schema
        return schema

    setattr(app, "openapi", openapi)  # noqa: B010 — FastAPI's documented override
