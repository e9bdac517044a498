"""Bus clients against a real ``twistd busnode``: docs/bus.md's two client scripts run as
separate processes and see each other through the node, and the node's mesh peer (another
``twistd busnode``, no ``--relay`` anywhere) sees their messages as the node's own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support.processes import free_port, python, twistd

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs"
FAST = ("--reconnect-initial=0.1", "--reconnect-max=0.5", "--withdraw-timeout=0.5")


def section() -> str:
    text = (DOCS / "bus.md").read_text()
    return text.split("## Clients: scripts attached to a node", 1)[1].split("\n## ", 1)[0]


def test_docs_client_examples_see_each_other_and_the_mesh_peer(tmp_path: Path) -> None:
    text = section()
    (node_command,) = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    answerer, asker = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    port, peer_port = free_port(), free_port()

    def here(code: str) -> str:
        for old, new in ((8080, port), (8081, peer_port)):
            code = code.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
            code = code.replace(f"tcp:{old}:", f"tcp:{new}:")
        return code

    argv = here(node_command).split()
    assert argv[:3] == ["twistd", "-n", "busnode"]
    node = twistd("busnode", *argv[3:], *FAST, cwd=tmp_path)
    peer = twistd(
        "busnode",
        f"--listen=tcp:{peer_port}:interface=127.0.0.1",
        "--log-messages",
        *FAST,
        cwd=tmp_path,
    )
    (tmp_path / "answerer.py").write_text(here(answerer))
    (tmp_path / "asker.py").write_text(here(asker))
    with peer.start(), node.start():
        node.wait_for(r"bus node \S+ ready")
        node.wait_for(r"peer \S+ joined")
        with python("answerer.py", cwd=tmp_path).start() as one:
            one.wait_for(r"attached to node")
            node.wait_for(r"bus client \S+ attached")
            with python("asker.py", cwd=tmp_path).start() as two:
                assert two.wait(30) == 0, two.tail()
                assert "b'hello world'" in two.output
            assert one.wait(30) == 0, one.tail()
        # the mesh peer carried both clients' messages: they left the node as its own
        peer.wait_for(r"bus message .*greet\b")
        peer.wait_for(r"bus message .*greeting\b")
        node.wait_for(r"bus client \S+ left")
        assert "Traceback" not in node.output + peer.output, node.tail() + peer.tail()
        assert node.terminate() == 0, node.tail()
