"""Serving the app: service, visitor workspaces, web guard, served files, cancelling, redaction, examples."""
