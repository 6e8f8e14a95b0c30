"""treeline_common.logs: every process logs plain lines, whoever colours them."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from treeline_common.logs import PlainFormatter, parse_level, setup_logging, strip_ansi


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, werkzeug = logging.getLogger(), logging.getLogger("werkzeug")
    saved = (list(root.handlers), root.level, list(werkzeug.handlers), werkzeug.level, werkzeug.propagate)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    werkzeug.handlers[:], werkzeug.level, werkzeug.propagate = saved[2], saved[3], saved[4]


@pytest.mark.parametrize(("text", "plain"), [
    ("\x1b[33mGET /x HTTP/1.1\x1b[0m", "GET /x HTTP/1.1"),
    ("\x1b[1m\x1b[31mPOST /y\x1b[0m", "POST /y"),
    ("\x1b[38;5;208mx\x1b[0m", "x"),
    ("cursor\x1b[2Kline\x1b]", "cursorline"),  # ESC ] (OSC introducer) goes too
    ("plain", "plain"),
])
def test_strip_ansi_removes_every_escape(text: str, plain: str) -> None:
    assert strip_ansi(text) == plain


def test_the_formatter_strips_escapes_from_arguments_too() -> None:
    coloured = ("\x1b[33mGET /\x1b[0m", 404)
    record = logging.LogRecord("werkzeug", logging.INFO, __file__, 1, '"%s" %s', coloured, None)
    assert PlainFormatter("%(levelname)s %(message)s").format(record) == 'INFO "GET /" 404'


def test_werkzeug_request_lines_are_plain_through_the_one_handler(restore_logging: None) -> None:
    from werkzeug.serving import WSGIRequestHandler

    stream = io.StringIO()
    logging.getLogger("werkzeug").addHandler(logging.StreamHandler(io.StringIO()))  # a handler of its own
    setup_logging("INFO", tag="rpi4-1", stream=stream)
    setup_logging("INFO", tag="rpi4-1", stream=stream)  # twice: still one handler, one line per record
    handler = WSGIRequestHandler.__new__(WSGIRequestHandler)  # only what log_request reads
    handler.path, handler.command, handler.request_version = "/api/nope", "GET", "HTTP/1.1"
    handler.client_address, handler.requestline = ("127.0.0.1", 1), "GET /api/nope HTTP/1.1"
    handler.log_request(404)  # werkzeug colours 4xx lines yellow
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert "\x1b" not in lines[0]
    assert " INFO [rpi4-1] werkzeug: " in lines[0] and '"GET /api/nope HTTP/1.1" 404' in lines[0]
    assert logging.getLogger("werkzeug").handlers == []


def test_levels_are_checked() -> None:
    assert parse_level("debug") == logging.DEBUG and parse_level(30) == 30
    with pytest.raises(ValueError, match="known: DEBUG"):
        parse_level("chatty")
