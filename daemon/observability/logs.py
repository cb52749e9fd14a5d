"""JSON log lines on stderr, configured once for the whole process.

Messages are short and lowercase; facts travel as fields given through
`extra={...}` and come out as top-level JSON keys.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# Attributes every LogRecord has; anything else came in through `extra`.
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# Libraries whose INFO chatter is not ours to print.
_QUIET = ("aiohttp.access", "grpc", "asyncio", "urllib3", "kubernetes")


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, msg, fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ClientFaultFilter(logging.Filter):
    """Drops aiohttp's tracebacks for malformed requests: the client got its
    400, and a hostile client must not be able to flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, HttpProcessingError)


def configure(level: str) -> None:
    """Send every logger's records to stderr as JSON at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientFaultFilter) for f in server.filters):
        server.addFilter(ClientFaultFilter())
