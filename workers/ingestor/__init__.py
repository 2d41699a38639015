"""The ingestor worker: TELEMETRY stream -> telemetry.samples, exactly-once effect."""
