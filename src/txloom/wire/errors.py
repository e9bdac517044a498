"""Errors shared by every codec in ``txloom.wire``.

As in h11, a codec error says who is at fault: the peer sent bytes that break the format
(``RemoteProtocolError``) or the local side asked to send something the format cannot
carry (``LocalProtocolError``). Protocols answer the first with an error frame and a
close; the second is a bug or a limit in the caller and is raised to it.
"""

from __future__ import annotations


class WireError(Exception):
    """Base of every error raised by a txloom codec."""


class RemoteProtocolError(WireError):
    """The peer's bytes do not follow the wire format; the stream cannot continue."""


class LocalProtocolError(WireError):
    """We were asked to encode something the wire format cannot carry."""


class FrameTooLarge(RemoteProtocolError):
    """A length field announced more bytes than the declared limit.

    Raised as soon as the length field is read, before any of the announced bytes are
    buffered, so a peer claiming 4 GiB costs nothing.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class TruncatedFrame(RemoteProtocolError):
    """The peer closed the stream in the middle of a frame: an error, never a clean end."""

    def __init__(self, buffered: int) -> None:
        super().__init__(f"stream ended inside a frame ({buffered} bytes of it received)")
        self.buffered = buffered
