"""Step 2: browser protections: Origin checks, CORS, security headers."""
