"""HTTP edges shared by every part: the Flask error mapping and the JSON REST client.

Servers call :func:`install_error_handlers` so every :class:`TreelineError` becomes its
HTTP status with a ``{"error": {code, message, details}}`` body, and nothing escapes as a
bare 500 with a traceback. Clients call :func:`call_json`, which turns such bodies back
into the same exception classes. Flask and requests are imported lazily so this leaf
package stays importable with numpy alone.
"""

from __future__ import annotations

import logging
from typing import Any

from treeline_common.errors import InvalidInput, TreelineError, Unavailable, from_body, http_status

log = logging.getLogger(__name__)


def install_error_handlers(app: Any) -> None:
    """Map Treeline errors, HTTP errors and unexpected exceptions to JSON bodies."""
    from flask import jsonify
    from werkzeug.exceptions import HTTPException

    @app.errorhandler(TreelineError)
    def _treeline_error(err: TreelineError) -> Any:
        return jsonify(err.to_body()), http_status(err)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Any:
        codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "TOO_LARGE"}
        code = codes.get(err.code or 0, "HTTP_ERROR")
        if err.code == 400:
            code = InvalidInput.code
        body = {"error": {"code": code, "message": err.description or err.name, "details": []}}
        return jsonify(body), err.code or 500

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Any:
        log.exception("unhandled error")
        body = TreelineError(f"internal error: {type(err).__name__}").to_body()
        return jsonify(body), 500


def json_body(request: Any) -> dict[str, Any]:
    """The request's JSON object, or InvalidInput naming what is wrong with it."""
    body = request.get_json(silent=True)
    if body is None:
        raise InvalidInput("request body must be JSON", [{"path": "", "message": "body is not valid JSON"}])
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object", [{"path": "", "message": "not an object"}])
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
