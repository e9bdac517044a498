"""Scaling out on NATS: a connection for reactor code, and a membership table in a
JetStream key-value bucket that the clustered servers build on."""
