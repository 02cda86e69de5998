"""The Azure IoT Hub integration image."""
