"""Errors of nested streams, as the client's reader or ``on_error`` sees them.

Wire errors (``TruncatedFrame``, ``FrameTooLarge``, ``SourceAborted``, ``BadCompression``)
reach the reader of the source they happened on unchanged; these add what is not a matter
of bytes: refusals, timeouts, a missing service.
"""

from __future__ import annotations


class StreamError(Exception):
    """Base of the errors txloom.streams raises itself."""


class RequestRefused(StreamError):
    """The server refused the request or an attach; the message is its reason."""


class NoEndpoint(StreamError):
    """The resolver knows no endpoint for the service address."""


class StreamTimeout(StreamError):
    """A configured timeout passed (the message names which)."""


class ConnectionLostEarly(StreamError):
    """A connection closed before its request or source was complete."""
