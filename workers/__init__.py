"""Celery GPU workers: arrive with issue #5."""
