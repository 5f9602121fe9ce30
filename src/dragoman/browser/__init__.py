"""Step 2: browser protections: sessions and CSRF, Origin checks, CORS, security headers."""
