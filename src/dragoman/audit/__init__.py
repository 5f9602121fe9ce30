"""Step 8: the audit trail, redacted before it is written."""
