"""HTTP edges shared by every part: the Flask error mapping and the JSON REST client.

Servers call :func:`install_error_handlers` so every :class:`TreelineError` becomes its
HTTP status with a ``{"error": {code, message, details}}`` body, and nothing escapes as a
bare 500 with a traceback. Clients call :func:`call_json`, which turns such bodies back
into the same exception classes. Flask and requests are imported lazily so this leaf
package stays importable with numpy alone.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from treeline_common.errors import (
    InvalidInput,
    PayloadTooLarge,
    TreelineError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    from_body,
    http_status,
)

log = logging.getLogger(__name__)

JSON_BODY_LIMIT = 1 << 20  # bytes: the default limit of every request body (SLAs, pushes, ...)
MAX_JSON_DEPTH = 64  # nesting levels of arrays/objects; Treeline's deepest document has about 10
_INT64 = 1 << 63
_PARSE_DEPTH = 256  # deeper texts are refused before parsing (the C parser recurses per level)
JSON_TYPES = ("application/json",)  # what json_body accepts, besides any application/*+json
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
BEARER_CHALLENGE = 'Bearer realm="treeline", error="invalid_token"'  # WWW-Authenticate of every 401


def _human(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << (shift - 4)) == 0:
            return f"{size / (1 << shift):g} {unit}"
    return f"{size} bytes"


def too_large(limit: int | None, what: str = "request body") -> PayloadTooLarge:
    """The 413 error naming ``limit`` (bytes) in its message and details."""
    if limit is None:
        return PayloadTooLarge(f"{what} is too large", [{"path": "body", "message": "too large"}])
    return PayloadTooLarge(f"{what} exceeds the limit of {_human(limit)} ({limit} bytes)",
                           [{"path": "body", "message": f"larger than {limit} bytes", "limit_bytes": limit}])


def install_error_handlers(app: Any) -> None:
    """Map Treeline errors, HTTP errors and unexpected exceptions to JSON bodies."""
    from flask import jsonify, request
    from werkzeug.exceptions import HTTPException

    @app.errorhandler(TreelineError)
    def _treeline_error(err: TreelineError) -> Any:
        response = jsonify(err.to_body())
        response.status_code = http_status(err)
        if isinstance(err, Unauthorized):  # RFC 6750: a 401 names the scheme that would be accepted
            response.headers["WWW-Authenticate"] = BEARER_CHALLENGE
        return response

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Any:
        if err.code == 413:  # werkzeug's: Content-Length over the limit, or the stream went past it
            tle = too_large(request.max_content_length)
            return jsonify(tle.to_body()), 413
        if err.code == 415:
            ume = UnsupportedMediaType(err.description or err.name, [
                {"path": "Content-Type", "message": "unsupported", "accepted": list(JSON_TYPES)}])
            return jsonify(ume.to_body()), 415
        codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
        code = codes.get(err.code or 0, "HTTP_ERROR")
        if err.code == 400:
            code = InvalidInput.code
        body = {"error": {"code": code, "message": err.description or err.name, "details": []}}
        return jsonify(body), err.code or 500

    @app.errorhandler(RecursionError)
    def _too_deep(err: RecursionError) -> Any:
        # a safety net: json_body refuses deep documents first, but no input may reach a 500
        log.warning("request refused: %s", err)
        err_ = InvalidInput("input nested too deeply", [{"path": "", "message": "nested too deeply"}])
        return jsonify(err_.to_body()), 400

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Any:
        log.exception("unhandled error")
        body = TreelineError(f"internal error: {type(err).__name__}").to_body()
        return jsonify(body), 500


def install_body_limits(app: Any, limits: Mapping[str, int]) -> None:
    """Per-route request body limits: ``{endpoint: bytes}`` (e.g. ``"models.create_version"``);
    every other route keeps ``MAX_CONTENT_LENGTH``. Set before the view runs, so a body over the
    limit is refused with 413 from its Content-Length before it is read, and while it is read
    otherwise (chunked)."""
    from flask import request

    table = dict(limits)

    @app.before_request
    def _limit() -> None:
        limit = table.get(request.endpoint or "")
        if limit is not None:
            request.max_content_length = limit


def is_json_type(mimetype: str) -> bool:
    mimetype = (mimetype or "").lower()
    return mimetype in JSON_TYPES or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def _bad(message: str, path: str = "", detail: str | None = None) -> InvalidInput:
    return InvalidInput(message, [{"path": path, "message": detail or message}])


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def check_json_document(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """InvalidInput naming the first offending path when ``value`` nests deeper than ``max_depth``,
    holds a lone UTF-16 surrogate (no store can encode it), an integer beyond 64 bits (SQLite and
    BSON overflow), a key with NUL or starting with ``$`` (reserved by MongoDB). Iterative, so any
    depth is safe to walk."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise _bad("body holds an invalid unicode string", path, "lone surrogate in string")
            continue
        if isinstance(item, int) and not -_INT64 <= item < _INT64:
            raise _bad("body holds an integer out of range", path, "integers must fit in 64 bits")
        if not isinstance(item, (dict, list)):
            continue
        if depth > max_depth:
            raise _bad(f"body is nested too deeply (at most {max_depth} levels)", path,
                       f"nested deeper than {max_depth} levels")
        if isinstance(item, dict):
            for key, child in item.items():
                if _SURROGATE.search(key) or "\x00" in key or key.startswith("$"):
                    raise _bad("body holds an invalid key", _join(path, key),
                               "keys must be valid unicode, without NUL, and not start with '$'")
                stack.append((child, _join(path, key), depth + 1))
        else:
            stack.extend((child, _join(path, i), depth + 1) for i, child in enumerate(item))


def nested_deeper_than(data: bytes, limit: int) -> bool:
    """Whether a JSON text nests brackets deeper than ``limit`` (brackets inside strings do not
    count), found without parsing it: a deep document is refused before the recursive parser
    descends into it. A few ms per MiB; nothing for a text with few brackets."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    import numpy as np

    steps = np.zeros(256, dtype=np.int64)
    steps[[ord("["), ord("{")]] = 1
    steps[[ord("]"), ord("}")]] = -1
    outside = _JSON_STRING.sub(b'""', data)
    return bool(np.cumsum(steps[np.frombuffer(outside, dtype=np.uint8)]).max(initial=0) > limit)


def parse_json_bytes(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Strict JSON from UTF-8 bytes: InvalidInput (never another error) for bad encodings, syntax,
    ``NaN``/``Infinity``, out-of-range numbers, deep nesting or strings no store can hold."""
    if nested_deeper_than(data, max(max_depth, _PARSE_DEPTH)):  # else: parsed, and the walk names the path
        raise _bad(f"body is nested too deeply (at most {max_depth} levels)", "",
                   f"nested deeper than {max_depth} levels")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _bad("body is not UTF-8", "", f"invalid UTF-8 byte at offset {exc.start}") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise _bad(f"body is nested too deeply (at most {max_depth} levels)") from None
    except json.JSONDecodeError as exc:
        raise _bad("body is not valid JSON", "",
                   f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # NaN/Infinity, 1e999, an integer of more than 4300 digits
        raise _bad("body is not valid JSON", "", str(exc)[:200]) from None
    check_json_document(value, max_depth)
    return value


def json_value(request: Any) -> Any:
    """The request's JSON document, whatever its type (``null`` included).

    415 :class:`UnsupportedMediaType` naming ``application/json`` for a body of another content
    type (even one that would parse); 413 :class:`PayloadTooLarge` over the route's limit (the
    request's ``max_content_length``, 1 MiB by default); 400 :class:`InvalidInput` for an empty
    body or one that is not strict UTF-8 JSON (see :func:`parse_json_bytes`).
    """
    if not is_json_type(request.mimetype):
        length = request.content_length
        if length == 0 or (length is None and not request.get_data(cache=True)):
            raise _bad("request body is empty", "", "expected a JSON document (application/json)")
        got = request.mimetype or "none"
        raise UnsupportedMediaType(f"request body must be application/json, not {got}", [
            {"path": "Content-Type", "message": f"got {got}; accepted: {', '.join(JSON_TYPES)}",
             "accepted": list(JSON_TYPES)}])
    charset = (request.mimetype_params.get("charset") or "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(f"JSON must be UTF-8, not charset={charset}", [
            {"path": "Content-Type", "message": "charset must be utf-8",
             "accepted": ["application/json; charset=utf-8"]}])
    limit = request.max_content_length
    if limit is not None and request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    data = request.get_data(cache=True)  # bounded: werkzeug raises 413 past max_content_length
    if limit is not None and request.content_length is None and len(data) >= limit:
        raise too_large(limit)  # chunked: werkzeug stops reading at the limit instead of raising
    if not data:
        raise _bad("request body is empty", "", "expected a JSON document")
    return parse_json_bytes(data)


def json_body(request: Any) -> dict[str, Any]:
    """The request's JSON object, or the error naming what is wrong with it (see :func:`json_value`)."""
    body = json_value(request)
    if not isinstance(body, dict):
        kind = {type(None): "null", list: "an array", str: "a string", bool: "a boolean"}.get(
            type(body), "a number")
        raise _bad("request body must be a JSON object", "", f"expected an object, got {kind}")
    return body


def call_json(
    method: str,
    url: str,
    *,
    json: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    session: Any = None,
) -> Any:
    """Send a request and return the decoded JSON answer (None for an empty body).

    Raises the server's own error class for an error body, and :class:`Unavailable` when
    the server cannot be reached.
    """
    import requests

    sender = session or requests
    try:
        response = sender.request(method, url, json=json, data=data, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise Unavailable(f"{method} {url}: {exc}") from None
    return json_answer(response, method, url)


def json_answer(response: Any, method: str, url: str) -> Any:
    """The decoded JSON of a ``requests`` response (None for an empty body). An error status raises
    the server's own error class (:func:`~treeline_common.errors.from_body`); a success whose body
    is not JSON raises :class:`TreelineError`. ``method`` and ``url`` only word the errors."""
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        raise from_body(body, f"{method} {url}: HTTP {response.status_code}")
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise TreelineError(f"{method} {url}: answer is not JSON") from None
