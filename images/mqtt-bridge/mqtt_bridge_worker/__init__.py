"""The MQTT bridge integration worker."""
