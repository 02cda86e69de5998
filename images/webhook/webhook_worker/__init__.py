"""The generic HTTP webhook integration image."""
