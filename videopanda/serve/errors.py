"""The errors a request can end in: `APIError` becomes an OpenAI-style error body; `_ClientGone` means nobody is
left to answer. Every serving module raises them, so they sit below all of them."""

from __future__ import annotations

from fastapi.responses import JSONResponse

__all__ = ["APIError"]

_ECHO_CHARS = 120  # how much of a client's value an error message repeats


class APIError(Exception):
    """A request the server refuses; becomes an OpenAI-style `{"error": {...}}` body with this HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers


class _ClientGone(Exception):
    """The client closed its connection before its answer: nothing can be sent, its place is already free."""


def _short(value: str) -> str:
    """A client's value as an error message repeats it: quoted, and cut to a few words."""
    return repr(_short_plain(value))


def _short_plain(value: str) -> str:
    return value if len(value) <= _ECHO_CHARS else value[:_ECHO_CHARS] + "..."


def _error_response(status: int, message: str, kind: str, code: str | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)
