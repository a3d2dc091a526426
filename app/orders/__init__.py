"""Orders: stock reserved in one transaction, idempotent on `Idempotency-Key`."""
