"""The error tree (gateway.errors): one root, stdlib bases kept where they mean the same, drawn in full."""

from __future__ import annotations

import errno
import inspect
import re

import pytest

from gateway import errors
from gateway.errors import (
    DnsTemporaryError,
    GatewayError,
    InputError,
    MailboxError,
    NotFound,
    NotStored,
    OperationalError,
)

CLASSES = [
    value
    for value in vars(errors).values()
    if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == errors.__name__
]


def test_every_error_of_the_module_is_in_the_tree_and_in_its_drawing() -> None:
    drawing = errors.__doc__ or ""
    for cls in CLASSES:
        assert issubclass(cls, GatewayError), cls
        assert re.search(rf"[─ ]{cls.__name__}\b", drawing), f"{cls.__name__} is missing from the drawing"


@pytest.mark.parametrize(
    ("cls", "parent"),
    [(NotStored, OperationalError), (DnsTemporaryError, OperationalError), (MailboxError, OperationalError)],
)
def test_errors_raised_outside_errors_py_are_operational(
    cls: type[Exception], parent: type[Exception]
) -> None:
    assert issubclass(cls, parent)
    assert not issubclass(cls, InputError)


def test_a_mailbox_error_is_still_an_os_error() -> None:
    # Code that handles file and socket trouble (workers, the fan-out's retries) handles it as before.
    exc = MailboxError(errno.ECONNREFUSED, "IMAP server unreachable", "imap://127.0.0.1:143")
    assert isinstance(exc, OSError)
    assert (exc.errno, exc.strerror, exc.filename) == (
        errno.ECONNREFUSED,
        "IMAP server unreachable",
        exc.filename,
    )
    assert str(exc) == "IMAP server unreachable: imap://127.0.0.1:143"
    assert str(MailboxError(errno.EIO, "disk full")) == "disk full"
    with pytest.raises(OSError, match="unreachable"):
        raise exc


def test_a_vanished_reconcile_run_is_not_found() -> None:
    assert issubclass(NotFound, InputError)
