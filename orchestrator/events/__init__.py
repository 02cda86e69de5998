"""Events: the durable log, and the outbox that logs, announces and publishes every event."""
