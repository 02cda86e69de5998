"""Run the Pub/Sub worker: `python -m pubsub_worker`."""

from worker_sdk import run_worker

from .worker import PubSubWorker


def main() -> None:
    """Entry point of the google-pubsub image."""
    run_worker(PubSubWorker)


if __name__ == "__main__":
    main()
