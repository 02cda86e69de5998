"""The Google Cloud Pub/Sub integration image."""
