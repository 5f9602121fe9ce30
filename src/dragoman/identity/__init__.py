"""Step 1: who is calling, verified with the application's own identity system."""
