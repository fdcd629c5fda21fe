"""API errors as values: a code, a message and the field they concern, rendered as
`{"error": {"code", "message", "field"}}` by the server and raised again by the client."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class ErrorBody:
    code: str
    message: str
    field: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class ApiError(Exception):
    """An error answered to an HTTP client (or received from a replica by the client)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (field {field})" if field else ""))
        self.status = status
        self.body = ErrorBody(code, message, field)
        self.extra = extra or {}

    def to_json(self) -> dict[str, Any]:
        return {**self.body.to_json(), **self.extra}
