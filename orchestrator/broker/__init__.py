"""The MQTT broker: the managed Mosquitto process, and the broker accounts of keys and workers."""
