"""Assertions shared by test modules."""

import pytest


def one_line(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    """The raised error's message: one line, holding every fragment."""
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message
