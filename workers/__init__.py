"""Job execution: one job from stored CT files to RTSTRUCT, wherever it runs.

- job records: :mod:`workers.jobs` (files), :mod:`workers.redis_store` (Redis),
  :mod:`workers.records`, :mod:`model.files`;
- one job: :mod:`workers.pipeline` claims it, keeps its lease, stops it on a cancel or a
  time limit, and makes its one domain call,
  :func:`model.contouring.structure_set.contour_structure_set`, with the engine of
  :mod:`workers.model_loading` (the model, loaded once, g cached by
  :mod:`workers.embedding_cache`) injected;
- where jobs run: :mod:`workers.dispatch` (the in-process runner of ``llmctv serve``) or Celery
  (:mod:`workers.celery_app`, :mod:`workers.tasks`, :mod:`workers.runtime`,
  :mod:`workers.celery_dispatch` for the gateway's side);
- commands: :mod:`workers.cli` (``llmctv worker``, ``llmctv embed-cache``), :mod:`workers.warm`.

Imports :mod:`model` only, never :mod:`service`. Nothing heavy (torch) loads at import time.
"""
