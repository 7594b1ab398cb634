"""Errors in EngageLab's shape, `{"error": {"code", "message"}}`, with field details alongside,
so EngageLab's SDKs raise a readable error."""

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from relance.ledger import LedgerError, NotFound
from relance.ledger._base import LimitExceeded

# Codes follow EngageLab's where one exists: an invalid parameter is HTTP 400 with code 21003
# (as EngageLab answers, and its SDKs expect), 21004 authentication failed, 23008 over the rate
# limit; relance adds 21404 not found, 21409 conflict, 21503 unavailable.
INVALID = 400
CODES = {
    400: 21003,
    401: 21004,
    404: 21404,
    405: 21001,
    409: 21409,
    422: 21003,
    429: 23008,
    503: 21503,
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def error_body(
    status: int, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "error": {"code": CODES.get(status, 21000 + status), "message": message}
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

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        details = [{"field": exc.field, "message": exc.message}] if exc.field else None
        headers = {"WWW-Authenticate": 'Basic realm="relance"'} if exc.status == 401 else None
        return JSONResponse(
            error_body(exc.status, exc.message, details), exc.status, headers=headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code
        )
