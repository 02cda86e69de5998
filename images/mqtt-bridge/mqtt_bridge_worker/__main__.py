"""Entry point of the mqtt-bridge image."""

from worker_sdk import run_worker

from .worker import BridgeWorker


def main() -> None:
    """Run the worker until SIGTERM."""
    run_worker(BridgeWorker)


if __name__ == "__main__":
    main()
