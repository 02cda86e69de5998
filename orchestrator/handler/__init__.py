"""The handler: applications, keys, devices, uplinks, downlinks and the event stream."""
