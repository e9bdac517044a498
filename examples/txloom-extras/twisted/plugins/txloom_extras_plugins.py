"""Twisted plugin dropin of the txloom-extras distribution.

Twisted's plugin loader imports every module in a ``twisted/plugins`` directory on
``sys.path`` and collects the module-level objects that provide a plugin interface; the
factories this distribution offers to txloom are declared here.
"""

# Store server: one SQLite database (``--backend sqlite``)
from txloom_extras.factories import SQLiteBackendFactory

sqlite_backend = SQLiteBackendFactory()

# Bus node: a discovery that reads peers from a file (``--discovery file``)
from txloom_extras.filepeers import FilePeersFactory  # noqa: E402

file_peers = FilePeersFactory()
