"""The handler: the device side (uplinks, downlinks, and the registry in memory for the message path)."""
