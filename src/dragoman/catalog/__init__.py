"""Step 3: which catalog operation a request is, and which scope it needs."""
