"""Handler modules to try reverse RPC with (``--handlers txloom.rpc.examples.echo``)."""
