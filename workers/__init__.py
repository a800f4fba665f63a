"""Job execution: one job from stored CT files to RTSTRUCT, wherever it runs.

- job records: :mod:`workers.jobs` (files), :mod:`workers.redis_store` (Redis),
  :mod:`workers.records`, :mod:`workers.atomic_write`;
- one job: :mod:`workers.pipeline` drives :mod:`workers.engine` (the model, loaded once, with
  :mod:`workers.embedding_cache`), then :mod:`workers.consistency` and :mod:`workers.preview`;
- where jobs run: :mod:`workers.dispatch` (the in-process runner of ``llmctv serve``) or Celery
  (:mod:`workers.celery_app`, :mod:`workers.tasks`, :mod:`workers.runtime`,
  :mod:`workers.celery_dispatch` for the gateway's side);
- commands: :mod:`workers.command` (``llmctv worker``, ``llmctv embed-cache``), :mod:`workers.warm`.

Imports :mod:`model` only, never :mod:`service`. Nothing heavy (torch) loads at import time.
"""
