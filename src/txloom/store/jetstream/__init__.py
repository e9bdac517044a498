"""The store's ``jetstream`` backend: facts in a NATS JetStream stream (see ``backend``)."""
