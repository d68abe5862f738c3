"""Unit tests for :mod:`cellgate.logs`: log output never contains a URL password.

Each test logs through a real :class:`logging.Logger` to a handler that writes
to an :class:`io.StringIO`, with :class:`~cellgate.logs.RedactingFilter`
added to the handler, and then reads what was actually written.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import pytest

from cellgate.logs import LOG_FORMAT, RedactingFilter, configure_logging

SECRET = "hunter2secret"
DB_URL = f"mysql+pymysql://nova:{SECRET}@db.example.org/nova"
MQ_URL = f"rabbit://nova:{SECRET}@mq1:5672,nova2:{SECRET}x@mq2:5673/cell1"


class Captured:
    """A logger whose output lands in a string."""

    def __init__(self, logger: logging.Logger, stream: io.StringIO) -> None:
        self.logger = logger
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()


@pytest.fixture
def log(request: pytest.FixtureRequest) -> Iterator[Captured]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(f"cellgate.tests.{request.node.name}")
    logger.handlers = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # keep records away from pytest's own handlers
    yield Captured(logger, stream)
    logger.handlers = []


def test_message_without_secrets_is_unchanged(log: Captured) -> None:
    log.logger.info("cell %s has %d hosts", "cell1", 3)
    assert log.text == f"INFO {log.logger.name}: cell cell1 has 3 hosts\n"


def test_url_in_args_is_masked(log: Captured) -> None:
    log.logger.warning("cannot connect to %s after %d tries", DB_URL, 3)
    assert SECRET not in log.text
    assert "cannot connect to mysql+pymysql://nova:***@db.example.org/nova after 3 tries" in (
        log.text
    )


def test_multi_host_url_in_args_is_masked(log: Captured) -> None:
    log.logger.error("broker %r unreachable", MQ_URL)
    assert SECRET not in log.text
    assert "rabbit://nova:***@mq1:5672,nova2:***@mq2:5673/cell1" in log.text


def test_url_in_mapping_args_is_masked(log: Captured) -> None:
    log.logger.info("%(cell)s uses %(url)s", {"cell": "cell1", "url": DB_URL})
    assert SECRET not in log.text
    assert "cell1 uses mysql+pymysql://nova:***@db.example.org/nova" in log.text


def test_url_in_the_message_itself_is_masked(log: Captured) -> None:
    log.logger.debug(f"connecting to {DB_URL}")
    assert SECRET not in log.text
    assert "connecting to mysql+pymysql://nova:***@db.example.org/nova" in log.text


def test_non_string_message_is_masked(log: Captured) -> None:
    class Target:
        def __str__(self) -> str:
            return f"Target({DB_URL})"

    log.logger.info(Target())
    assert SECRET not in log.text
    assert "Target(mysql+pymysql://nova:***@db.example.org/nova)" in log.text


def test_percent_in_the_final_message_survives_formatting(log: Captured) -> None:
    # After the filter the message is final text: a "%" in it must not be
    # interpolated a second time by the handler's formatter.
    log.logger.info("%d%% of %s done %s", 50, DB_URL, "%(x)s")
    assert "50% of mysql+pymysql://nova:***@db.example.org/nova done %(x)s" in log.text
    assert SECRET not in log.text


def test_exception_traceback_is_masked(log: Captured) -> None:
    try:
        raise ConnectionError(f"cannot reach {MQ_URL}")
    except ConnectionError:
        log.logger.exception("transport for %s failed", "cell1")
    text = log.text
    assert SECRET not in text
    assert "Traceback (most recent call last)" in text
    assert "ConnectionError: cannot reach rabbit://nova:***@mq1:5672,nova2:***@mq2:5673" in text
    assert "transport for cell1 failed" in text


def test_chained_exception_traceback_is_masked(log: Captured) -> None:
    try:
        try:
            raise OSError(f"driver said {DB_URL}")
        except OSError as exc:
            raise RuntimeError(f"wrapped {MQ_URL}") from exc
    except RuntimeError:
        log.logger.error("failed", exc_info=True)
    text = log.text
    assert SECRET not in text
    assert "OSError: driver said mysql+pymysql://nova:***@db.example.org/nova" in text
    assert "direct cause" in text
    assert "RuntimeError: wrapped rabbit://nova:***@" in text


def test_exc_info_passed_as_tuple_is_masked(log: Captured) -> None:
    try:
        raise ValueError(DB_URL)
    except ValueError:
        info = sys.exc_info()
    log.logger.warning("later", exc_info=info)
    assert SECRET not in log.text
    assert "ValueError: mysql+pymysql://nova:***@db.example.org/nova" in log.text


def test_filter_keeps_every_record() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "url %s", (DB_URL,), None)
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "url mysql+pymysql://nova:***@db.example.org/nova"
    assert record.args is None


def test_filter_applied_twice_is_harmless() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s at 100%%", (DB_URL,), None)
    RedactingFilter().filter(record)
    RedactingFilter().filter(record)
    assert record.getMessage() == "mysql+pymysql://nova:***@db.example.org/nova at 100%"


def test_a_later_unfiltered_handler_sees_the_redacted_record(log: Captured) -> None:
    # The filter rewrites the record itself, so handlers after the filtering
    # one print the masked text too.
    other = io.StringIO()
    plain = logging.StreamHandler(other)
    log.logger.addHandler(plain)
    try:
        raise OSError(DB_URL)
    except OSError:
        log.logger.exception("see %s", MQ_URL)
    assert SECRET not in log.text
    assert SECRET not in other.getvalue()
    assert "OSError: mysql+pymysql://nova:***@db.example.org/nova" in other.getvalue()


def test_configure_logging_installs_a_redacting_stderr_handler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        first = configure_logging(logging.INFO)
        second = configure_logging(logging.DEBUG)
        ours = [h for h in root.handlers if getattr(h, "_cellgate", False)]
        assert ours == [second]  # reconfiguring replaces, never stacks
        assert first not in root.handlers
        assert root.level == logging.DEBUG
        assert any(isinstance(f, RedactingFilter) for f in second.filters)
        assert isinstance(second.formatter, logging.Formatter)
        assert second.formatter._fmt == LOG_FORMAT

        logging.getLogger("sqlalchemy.engine.test").warning("engine for %s", DB_URL)
        err = capsys.readouterr().err
        assert "engine for mysql+pymysql://nova:***@db.example.org/nova" in err
        assert SECRET not in err
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)
