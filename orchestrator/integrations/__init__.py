"""Integrations: records, secrets at rest, and what workers report."""
