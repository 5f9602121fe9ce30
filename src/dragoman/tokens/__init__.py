"""Steps 6 and the upstream side: minting scoped tokens, and verifying them."""
