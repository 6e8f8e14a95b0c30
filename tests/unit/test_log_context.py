"""treeline_common.logs context: request and deployment ids on every record, plain and JSON lines."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator

import pytest

from treeline_common.logs import (
    ContextFilter,
    JsonFormatter,
    PlainFormatter,
    current_log_context,
    log_context,
    log_format_from_env,
    setup_logging,
)
from treeline_common.request_context import deployment_of_route, deployment_of_stage, request_id_from


def record(message: str = "stage %s failed", *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            exc_info = sys.exc_info()
    return logging.LogRecord("node_engine.x", logging.WARNING, __file__, 1, message, args or ("s-0/0/1",),
                             exc_info)


class Records(logging.Handler):
    """Every record it sees, stamped by the filter every process uses."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def ids_of(self, start: str) -> list[tuple[str, str, str]]:
        """(request_id, deployment_id, thread) of each record whose message starts with ``start``."""
        return [(*ids(r), str(r.threadName)) for r in self.records if r.getMessage().startswith(start)]


def ids(rec: logging.LogRecord) -> tuple[str, str]:
    """The ids the filter put on ``rec``."""
    return rec.__dict__["request_id"], rec.__dict__["deployment_id"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, werkzeug = logging.getLogger(), logging.getLogger("werkzeug")
    saved = (list(root.handlers), root.level, list(werkzeug.handlers), werkzeug.level, werkzeug.propagate)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    werkzeug.handlers[:], werkzeug.level, werkzeug.propagate = saved[2], saved[3], saved[4]


def test_the_filter_stamps_the_context_and_empty_without() -> None:
    bare = record()
    assert ContextFilter().filter(bare) and ids(bare) == ("", "")
    with log_context(request_id="r-1", deployment_id="svc-0"):
        inside = record()
        ContextFilter().filter(inside)
        with log_context(deployment_id="svc-1"):  # None keeps the outer request id
            assert current_log_context().request_id == "r-1"
            assert current_log_context().deployment_id == "svc-1"
        assert current_log_context().deployment_id == "svc-0"
    assert ids(inside) == ("r-1", "svc-0")
    assert current_log_context().request_id == ""


def test_a_new_thread_starts_without_the_ids() -> None:
    seen: list[str] = []
    with log_context(request_id="r-1"):
        thread = threading.Thread(target=lambda: seen.append(current_log_context().request_id))
        thread.start()
        thread.join()
    assert seen == [""]


def test_plain_lines_end_with_the_ids_only_when_set() -> None:
    fmt = PlainFormatter("%(levelname)s %(name)s: %(message)s")
    assert fmt.format(record()) == "WARNING node_engine.x: stage s-0/0/1 failed"
    with log_context(request_id="r-1", deployment_id="svc-0"):
        assert fmt.format(record()) == \
            "WARNING node_engine.x: stage s-0/0/1 failed request_id=r-1 deployment_id=svc-0"
    with log_context(deployment_id="svc-0"):
        assert fmt.format(record()).endswith("failed deployment_id=svc-0")
    with log_context(request_id="r-1"):
        line = fmt.format(record(exc=True))
    first, *trace = line.splitlines()
    assert first.endswith("failed request_id=r-1")  # the ids end the message line, before the traceback
    assert trace[0].startswith("Traceback") and trace[-1] == "RuntimeError: boom"


def test_json_lines_carry_every_field() -> None:
    fmt = JsonFormatter(tag="rpi4-1")
    bare = json.loads(fmt.format(record("\x1b[33mGET /x\x1b[0m %s", 404)))
    assert set(bare) == {"ts", "level", "logger", "message", "request_id", "deployment_id", "exc", "tag"}
    assert bare["message"] == "GET /x 404"
    assert (bare["request_id"], bare["deployment_id"], bare["exc"]) == ("", "", None)
    assert bare["level"] == "WARNING" and bare["logger"] == "node_engine.x" and bare["tag"] == "rpi4-1"
    assert bare["ts"].endswith("+00:00") and "T" in bare["ts"]
    with log_context(request_id="r-1", deployment_id="svc-0"):
        line = fmt.format(record("bad\nrequest %s", exc=True))
    assert "\n" not in line  # one object per line, whatever the message and traceback hold
    doc = json.loads(line)
    assert (doc["request_id"], doc["deployment_id"]) == ("r-1", "svc-0")
    assert doc["message"] == "bad\nrequest s-0/0/1"
    assert doc["exc"].startswith("Traceback") and doc["exc"].endswith("RuntimeError: boom")
    assert "tag" not in json.loads(JsonFormatter().format(record()))


def test_setup_logging_reads_the_format_from_the_environment(restore_logging: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setenv("TREELINE_LOG_FORMAT", "JSON")
    setup_logging("INFO", stream=stream)
    with log_context(request_id="r-9", deployment_id="svc-2"):
        logging.getLogger("treeline.test").info("deployed %s", "svc-2")
    doc = json.loads(stream.getvalue().splitlines()[-1])
    assert (doc["message"], doc["request_id"], doc["deployment_id"]) == ("deployed svc-2", "r-9", "svc-2")
    monkeypatch.setenv("TREELINE_LOG_FORMAT", "xml")
    setup_logging("INFO", stream=stream)  # an unknown value: plain lines, and a warning saying so
    assert "TREELINE_LOG_FORMAT='xml' is unknown (known: plain, json)" in stream.getvalue().splitlines()[-1]
    with pytest.raises(ValueError, match="known: plain, json"):
        setup_logging("INFO", stream=stream, fmt="yaml")


def test_log_format_from_env() -> None:
    assert log_format_from_env({}) == ("plain", None)
    assert log_format_from_env({"TREELINE_LOG_FORMAT": " Json "}) == ("json", None)
    assert log_format_from_env({"TREELINE_LOG_FORMAT": "plain"}) == ("plain", None)
    fmt, problem = log_format_from_env({"TREELINE_LOG_FORMAT": "xml"})
    assert fmt == "plain" and problem is not None and "xml" in problem


def test_an_extra_id_wins_over_the_context() -> None:
    rec = record()
    rec.__dict__["request_id"] = "from-extra"
    with log_context(request_id="r-1"):
        ContextFilter().filter(rec)
    assert ids(rec) == ("from-extra", "")


@pytest.mark.parametrize(("header", "kept"), [
    ("abc-123_X.y", True), ("a" * 64, True), ("a" * 65, False), ("", False), (None, False),
    ("bad id", False), ("id\nforged=1", False), ("é", False), ("a/b", False)])
def test_request_ids_are_sane_tokens_or_new(header: str | None, kept: bool) -> None:
    rid = request_id_from(header, make=lambda: "new")
    assert rid == (header if kept else "new")


@pytest.mark.parametrize(("rule", "args", "deployment"), [
    ("/api/service/<service_id>/<instance>", {"service_id": "s1", "instance": "0"}, "s1-0"),
    ("/api/service/<service_id>/instance/<int:instance>", {"service_id": "s1", "instance": 2}, "s1-2"),
    ("/api/service/<service_id>", {"service_id": "s1"}, "s1"),
    ("/v2/models/<name>/infer", {"name": "s1"}, "s1"),
    ("/api/models/<name>", {"name": "mobilenet"}, ""),  # a model, not a deployment
    ("/api/nodes", {}, "")])
def test_the_deployment_of_a_route(rule: str, args: dict[str, object], deployment: str) -> None:
    assert deployment_of_route(rule, args) == deployment


def test_the_deployment_of_a_stage_key() -> None:
    assert deployment_of_stage("svc-0/3/1") == "svc-0"
    assert deployment_of_stage("a/b/svc-0/0/2") == "a/b/svc-0"
    assert deployment_of_stage("_probe") == "" and deployment_of_stage("x/y/z") == ""
