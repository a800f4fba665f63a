"""HTTP gateway (FastAPI): arrives with issue #4."""
