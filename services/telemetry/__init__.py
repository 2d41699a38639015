"""The telemetry service: ingest API, queries, latest snapshot and live tail (port 7002)."""
