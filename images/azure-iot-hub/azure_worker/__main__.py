"""Run the Azure IoT Hub worker: `python -m azure_worker`."""

from worker_sdk import run_worker

from .worker import AzureWorker


def main() -> None:
    """Entry point of the azure-iot-hub image."""
    run_worker(AzureWorker)


if __name__ == "__main__":
    main()
