"""Run the webhook worker: `python -m webhook_worker`."""

from worker_sdk import run_worker

from .worker import WebhookWorker


def main() -> None:
    """Entry point of the webhook image."""
    run_worker(WebhookWorker)


if __name__ == "__main__":
    main()
