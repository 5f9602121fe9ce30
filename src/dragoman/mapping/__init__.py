"""Step 4: which payment customer a cloud account is, and who may act for it."""
