"""Every failure leaves the API as an OpenAI error body, `{"error": {message, type, param, code}}`, with its
HTTP status; none leaves as a stack trace."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from solo.serving.protocol import (
    ErrorDetail,
    ErrorResponse,
)

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)
        self.headers = headers  # such as a 429's Retry-After

    def response(self) -> JSONResponse:
        return JSONResponse(ErrorResponse(error=self.detail).model_dump(), status_code=self.status,
                            headers=self.headers)


_UNION_MEMBER_NAMES = {"str", "int", "float", "bool", "dict", "list", "none"}


def _param(loc: tuple) -> str | None:
    # Pydantic puts the union member it tried into a location ('str', 'list[TextPart]',
    # 'NamedToolChoice'); OpenAI's `param` names fields and indices only.
    parts = [str(p) for p in loc if isinstance(p, int) or (
        p != "body" and p.isidentifier() and p.islower() and p not in _UNION_MEMBER_NAMES)]
    return ".".join(parts) or None


def _validation_error(exc: RequestValidationError) -> APIError:
    """OpenAI names one offending parameter per error: report the most specific one."""
    first = max(exc.errors(), key=lambda e: len(e["loc"]))
    kind, param = first["type"], _param(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if kind == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request: "
                             f"{first.get('ctx', {}).get('error', message)}")
    if param is None:
        return APIError(400, "The request body must be a JSON object, sent as Content-Type: application/json.")
    if kind == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param,
                        code="missing_required_parameter")
    code = "invalid_type" if kind.endswith(("_type", "_parsing")) else "invalid_value"
    return APIError(400, f"Invalid value for '{param}': {message}.", param=param, code=code)


def install_error_handlers(app: FastAPI) -> None:
    """Every failure leaves as an OpenAI error body; none leaves as a stack trace."""
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return APIError(exc.status_code, str(exc.detail), type=kind).response()

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return APIError(500, "The server had an error while processing your request.",
                        type="server_error").response()

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
