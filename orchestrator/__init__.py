"""IoT integration orchestrator: one worker per integration, and the handler they talk to."""
