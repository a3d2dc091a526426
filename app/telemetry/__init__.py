"""Logs, metrics and traces. Everything here is failsafe: telemetry never fails a request."""
