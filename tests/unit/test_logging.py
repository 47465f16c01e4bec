"""`shiftdesk serve`'s logs: text or JSON lines (SHIFTDESK_LOG__FORMAT), every line redacted,
tracebacks included."""

from __future__ import annotations

import io
import json
import logging

import pytest

from controlplane.config import Settings
from controlplane.main import configure_logging

TICKET = "96lxwE18K0PrbOBXoPgFtZUE2YbRPI3wg2Omh6Sqx9s"


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def emit(fmt: str, tmp_path) -> str:
    stream = io.StringIO()
    configure_logging(Settings(data_dir=tmp_path, log={"format": fmt}), stream)
    log = logging.getLogger("controlplane.gateway")
    log.info("refused %s", f"/gateway?ticket={TICKET}")
    log.debug("not at INFO")
    try:
        raise RuntimeError("bind password=Hunter2-xyz rejected")
    except RuntimeError:
        log.exception("directory down")
    return stream.getvalue()


def test_json_lines_carry_the_fields_and_no_secret(tmp_path, restore_root):
    text = emit("json", tmp_path)
    records = [json.loads(line) for line in text.splitlines()]
    assert [(r["level"], r["logger"], r["message"]) for r in records] == [
        ("INFO", "controlplane.gateway", "refused /gateway?ticket=[redacted]"),
        ("ERROR", "controlplane.gateway", "directory down")]
    assert "time" in records[0] and "RuntimeError" in records[1]["exc_info"]
    assert TICKET not in text and "Hunter2" not in text


def test_text_lines_are_redacted_too(tmp_path, restore_root):
    text = emit("text", tmp_path)
    assert "INFO controlplane.gateway: refused /gateway?ticket=[redacted]" in text
    assert "RuntimeError" in text and TICKET not in text and "Hunter2" not in text


def test_an_unknown_format_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="log.format"):
        Settings(data_dir=tmp_path, log={"format": "xml"})
