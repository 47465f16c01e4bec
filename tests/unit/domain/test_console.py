"""The console relay's one-line protocol: what the gateway sends, what the relay accepts."""

from __future__ import annotations

import pytest

from controlplane.domain import console
from controlplane.errors import InvalidInput, TemporaryError

NAME = "sd-main-sales-0a1b2c"
TEMPLATE = "sd-main.tpl-i3-m1024-c2"


def test_a_request_names_one_desktop_and_parses_back():
    line = console.request(NAME)
    assert line == b"SHIFTDESK-CONSOLE/1 sd-main-sales-0a1b2c\n"
    assert console.parse_request(line) == (console.Stream.VNC, NAME)
    line = console.request(NAME, console.Stream.CHANNEL)
    assert line == b"SHIFTDESK-CHANNEL/1 sd-main-sales-0a1b2c\n"
    assert console.parse_request(line) == (console.Stream.CHANNEL, NAME)


def test_a_templates_host_channel_may_be_asked_for_but_never_its_console():
    """A template on another host says it is ready over its host channel, through the relay."""
    line = console.request(TEMPLATE, console.Stream.CHANNEL)
    assert console.parse_request(line) == (console.Stream.CHANNEL, TEMPLATE)
    with pytest.raises(InvalidInput):
        console.request(TEMPLATE, console.Stream.VNC)
    with pytest.raises(InvalidInput):
        console.parse_request(f"SHIFTDESK-CONSOLE/1 {TEMPLATE}\n".encode())


@pytest.mark.parametrize("line", [
    b"SHIFTDESK-CONSOLE/1 sd-main-sales-0a1b2c",  # no newline
    b"SHIFTDESK-CONSOLE/2 sd-main-sales-0a1b2c\n",  # another protocol
    b"RFB 003.008\n",
    b"SHIFTDESK-CONSOLE/1 ../../etc/passwd\n",  # a path, not a name
    b"SHIFTDESK-CONSOLE/1 sd-main-sales-0a1b2c extra\n",
    b"SHIFTDESK-CONSOLE/1 Sd-Main\n",
    b"SHIFTDESK-CONSOLE/1 \xff\xfe\n",
    b"SHIFTDESK-CHANNEL/1 sd-main.tpl-../../x\n",
    b"SHIFTDESK-CHANNEL/1 sd-main.tpl-i3.tpl-i4\n",
    b"SHIFTDESK-CONSOLE/1 " + b"a" * 200 + b"\n",  # longer than a line may be
    b"\n",
])
def test_anything_else_is_refused_naming_the_request(line):
    with pytest.raises(InvalidInput) as err:
        console.parse_request(line)
    assert err.value.field == "request"


def test_the_gateway_never_sends_a_name_that_is_not_a_desktop_name():
    with pytest.raises(InvalidInput) as err:
        console.request("sd main\nSHIFTDESK-CONSOLE/1 other")
    assert err.value.field == "desktop"


def test_a_refusal_is_one_printable_line_the_gateway_reports():
    line = console.refusal("no such desktop\n\x1b[31mred")
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    with pytest.raises(TemporaryError, match="refused: no such desktop"):
        console.check_reply(line)
    assert console.check_reply(console.OK) is None


@pytest.mark.parametrize("line", [b"", b"OK", b"YES\n", b"NO \n", b"NO " + b"x" * 300 + b"\n"])
def test_a_reply_that_is_neither_ok_nor_a_refusal_is_an_error(line):
    with pytest.raises(TemporaryError, match="no valid reply"):
        console.check_reply(line)
