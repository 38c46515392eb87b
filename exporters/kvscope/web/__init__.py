"""The HTTP server, its index page and its web configuration (TLS, basic auth)."""
