"""Celery GPU workers (issue #5): ``llmctv worker`` and ``llmctv embed-cache``.

:mod:`workers.celery_app` configures Celery, :mod:`workers.tasks` holds the one thin task,
:mod:`workers.runtime` the model of each worker process, :mod:`workers.dispatch` the gateway's
side, :mod:`workers.warm` the embedding-cache commands. Nothing is loaded at import time.
"""
