import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from attune.errors import ConfigError
from attune.log import add_redactor, configure_logging, log_event, remove_redactor

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Installs our handler on a fresh stream and removes it afterwards."""
    out = io.StringIO()
    root = logging.getLogger()
    old_level = root.level
    yield out
    for handler in list(root.handlers):
        if getattr(handler, "_attune_handler", False):
            root.removeHandler(handler)
    root.setLevel(old_level)


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_text_line_has_timestamp_level_logger_event_and_fields(stream: io.StringIO) -> None:
    configure_logging("text", "INFO", stream)
    log_event(
        logging.getLogger("worker.execution"),
        "execution.finished",
        execution_id=12,
        action_ref="demo.add",
        status="completed",
        duration_ms=21,
    )
    [line] = lines(stream)
    assert re.fullmatch(
        TS + r" INFO worker\.execution event=execution\.finished execution_id=12 "
        r"action_ref=demo\.add status=completed duration_ms=21",
        line,
    ), line


def test_text_quotes_values_with_spaces_and_shows_plain_messages(stream: io.StringIO) -> None:
    configure_logging("text", "INFO", stream)
    logger = logging.getLogger("t")
    log_event(logger, "e", error="Command exited with code 1", empty="", obj={"a": 1})
    logger.info("plain %s", "message")
    first, second = lines(stream)
    assert first.endswith('event=e error="Command exited with code 1" empty="" obj="{\\"a\\": 1}"')
    assert second.endswith(" INFO t plain message")


def test_text_includes_extra_passed_directly(stream: io.StringIO) -> None:
    configure_logging("text", "INFO", stream)
    logging.getLogger("t").warning("slow", extra={"execution_id": 7})
    assert lines(stream)[0].endswith(" WARNING t slow execution_id=7")


def test_text_puts_the_traceback_after_the_line(stream: io.StringIO) -> None:
    configure_logging("text", "INFO", stream)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("t").exception("failed")
    text = stream.getvalue()
    assert " ERROR t failed\nTraceback" in text
    assert "ValueError: boom" in text


def test_json_line_has_the_standard_keys_and_fields(stream: io.StringIO) -> None:
    configure_logging("json", "INFO", stream)
    log_event(
        logging.getLogger("worker.execution"),
        "execution.finished",
        execution_id=12,
        action_ref="demo.add",
        worker="w1",
        status="completed",
        duration_ms=21,
    )
    [line] = lines(stream)
    data = json.loads(line)
    assert re.fullmatch(TS, data.pop("ts"))
    assert data == {
        "level": "INFO",
        "logger": "worker.execution",
        "event": "execution.finished",
        "message": "execution.finished",
        "execution_id": 12,
        "action_ref": "demo.add",
        "worker": "w1",
        "status": "completed",
        "duration_ms": 21,
    }


def test_json_plain_message_has_a_null_event(stream: io.StringIO) -> None:
    configure_logging("json", "INFO", stream)
    logging.getLogger("t").info("hello %d", 3)
    data = json.loads(lines(stream)[0])
    assert data["event"] is None
    assert data["message"] == "hello 3"


def test_json_is_one_line_even_with_newlines_and_tracebacks(stream: io.StringIO) -> None:
    configure_logging("json", "INFO", stream)
    try:
        raise RuntimeError("x")
    except RuntimeError:
        logging.getLogger("t").exception("multi\nline")
    [line] = lines(stream)
    data = json.loads(line)
    assert data["message"] == "multi\nline"
    assert "RuntimeError: x" in data["exc_info"]


def test_json_field_named_like_a_standard_key_does_not_replace_it(stream: io.StringIO) -> None:
    configure_logging("json", "INFO", stream)
    log_event(logging.getLogger("t"), "e", level=logging.INFO, message="m", name="n", ts=1)
    data = json.loads(lines(stream)[0])
    assert data["message"] == "e"
    assert data["message_"] == "m"
    assert data["ts_"] == 1
    assert data["name"] == "n"
    assert data["logger"] == "t"


def test_json_non_serialisable_fields_become_text(stream: io.StringIO) -> None:
    configure_logging("json", "INFO", stream)
    log_event(logging.getLogger("t"), "e", path=object())
    assert json.loads(lines(stream)[0])["path"].startswith("<object object")


def test_level_filters_lower_records(stream: io.StringIO) -> None:
    configure_logging("text", "warning", stream)
    logger = logging.getLogger("t")
    log_event(logger, "quiet", level=logging.INFO)
    log_event(logger, "loud", level=logging.WARNING)
    assert len(lines(stream)) == 1
    assert "event=loud" in lines(stream)[0]


def test_configure_twice_replaces_our_handler(stream: io.StringIO) -> None:
    configure_logging("text", "INFO", io.StringIO())
    configure_logging("json", "INFO", stream)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_attune_handler", False)]
    assert len(ours) == 1
    logging.getLogger("t").info("x")
    assert json.loads(lines(stream)[0])["message"] == "x"


def test_unknown_level_or_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="log level 'LOUD'"):
        configure_logging("text", "LOUD", io.StringIO())
    with pytest.raises(ConfigError, match="log format 'xml'"):
        configure_logging("xml", "INFO", io.StringIO())  # type: ignore[arg-type]


def test_redactor_masks_text_lines(stream: io.StringIO) -> None:
    def mask(line: str) -> str:
        return line.replace("hunter2", "***")

    add_redactor(mask)
    try:
        configure_logging("text", "INFO", stream)
        log_event(logging.getLogger("t"), "login", password="hunter2")
        logging.getLogger("t").info("pw is hunter2")
    finally:
        remove_redactor(mask)
    assert "hunter2" not in stream.getvalue()
    assert "password=***" in stream.getvalue()


def test_redactor_masks_json_even_where_json_escaping_changes_the_secret(
    stream: io.StringIO,
) -> None:
    secret = 'qu"ote'

    def mask(line: str) -> str:
        return line.replace(secret, "***")

    configure_logging("json", "INFO", stream)
    add_redactor(mask)
    try:
        log_event(logging.getLogger("t"), "e", token=secret)
        logging.getLogger("t").info("value %s", secret)
    finally:
        remove_redactor(mask)
    first, second = (json.loads(line) for line in lines(stream))
    assert first["token"] == "***"
    assert second["message"] == "value ***"


def test_redactor_registered_after_configure_still_applies(stream: io.StringIO) -> None:
    configure_logging("text", "INFO", stream)

    def mask(line: str) -> str:
        return line.replace("s3cret", "***")

    add_redactor(mask)
    try:
        logging.getLogger("t").info("s3cret")
    finally:
        remove_redactor(mask)
    assert "s3cret" not in stream.getvalue()


def test_a_failing_redactor_drops_the_line_instead_of_leaking_it(stream: io.StringIO) -> None:
    def broken(line: str) -> str:
        raise RuntimeError("bug")

    configure_logging("text", "INFO", stream)
    add_redactor(broken)
    try:
        logging.getLogger("t").info("s3cret")
    finally:
        remove_redactor(broken)
    assert "s3cret" not in stream.getvalue()
    assert "[log line dropped: a redactor failed]" in stream.getvalue()


def test_log_event_reports_the_callers_location(stream: io.StringIO) -> None:
    handler = configure_logging("text", "INFO", stream)
    handler.setFormatter(logging.Formatter("%(filename)s"))
    log_event(logging.getLogger("t"), "e")
    assert lines(stream) == ["test_log.py"]


def test_default_stream_is_stderr_at_call_time(
    stream: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("text", "INFO")
    logging.getLogger("t").info("to stderr")
    assert "to stderr" in capsys.readouterr().err


def test_importing_log_does_not_import_yaml() -> None:
    code = "import sys, attune.log; print('yaml' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
