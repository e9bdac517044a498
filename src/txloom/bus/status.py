"""Two small pods a node runs for operators: a status responder and a message log.

Any pod on the mesh can ask a node how it is: a ``txloom.node.status`` message is answered
(as a reply, so ``receipt.wait_until`` works) with a JSON description of the node. The
message log writes one line per message the node sees, for watching a mesh at work.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from txloom.bus.bus import Bus
from txloom.bus.message import Message

__all__ = ["STATUS_REPLY_TYPE", "STATUS_REQUEST_TYPE", "MessageLog", "StatusResponder"]

STATUS_REQUEST_TYPE = "txloom.node.status"
STATUS_REPLY_TYPE = "txloom.node.status.reply"


class StatusResponder:
    """Answers ``txloom.node.status`` with ``describe()`` as JSON."""

    def __init__(self, bus: Bus, describe: Callable[[], dict[str, Any]]) -> None:
        self.describe = describe
        self.pod = bus.connect()
        self.pod.on_type(STATUS_REQUEST_TYPE, self._answer)

    def _answer(self, msg: Message) -> None:
        body = json.dumps(self.describe(), separators=(",", ":"), sort_keys=True)
        self.pod.reply_to(msg, Message.new(STATUS_REPLY_TYPE, body))


class MessageLog:
    """Logs every message this node's bus carries (one line each)."""

    log = Logger()

    def __init__(self, bus: Bus) -> None:
        self.pod = bus.connect()
        self.pod.on(self._log)

    def _log(self, msg: Message) -> None:
        self.log.info(
            "bus message {msg_type} {uuid} reply_to={response_to} ({size} bytes)",
            msg_type=msg.msg_type,
            uuid=msg.uuid,
            response_to=msg.response_to or "-",
            size=len(msg.data),
        )
