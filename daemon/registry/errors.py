"""OCI error bodies and their HTTP statuses, in one table.

Body shape (distribution-spec, "Error Codes"):
`{"errors": [{"code": ..., "message": ..., "detail": ...}]}`.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

STATUS_BY_CODE = {
    "BLOB_UNKNOWN": 404,
    "MANIFEST_UNKNOWN": 404,
    "NAME_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "DIGEST_INVALID": 400,
    "MANIFEST_INVALID": 400,
    "RANGE_INVALID": 416,
    "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
}
MESSAGE_BY_CODE = {
    "BLOB_UNKNOWN": "blob unknown to registry",
    "MANIFEST_UNKNOWN": "manifest unknown",
    "NAME_UNKNOWN": "repository name not known to registry",
    "NAME_INVALID": "invalid repository name",
    "DIGEST_INVALID": "provided digest did not match uploaded content",
    "MANIFEST_INVALID": "manifest invalid",
    "RANGE_INVALID": "requested range not satisfiable",
    "UNSUPPORTED": "the operation is unsupported",
    "TOOMANYREQUESTS": "too many requests",
}


ERROR_CONTENT_TYPE = "application/json; charset=utf-8"


def error_body(code: str, detail: Any = None) -> bytes:
    """The JSON OCI error body for one error."""
    error = {"code": code, "message": MESSAGE_BY_CODE[code], "detail": detail}
    return json.dumps({"errors": [error]}).encode()


def error_response(
    code: str,
    detail: Any = None,
    *,
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Build a JSON OCI error response (aiohttp drops the body for HEAD)."""
    body = error_body(code, detail)
    response = web.Response(
        status=status or STATUS_BY_CODE[code],
        body=body,
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )
    return response
