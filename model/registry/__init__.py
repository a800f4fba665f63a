"""Model versions and their safe deploy: ``llmctv models register | list | promote | rollback``.

* :mod:`~model.registry.model_card`: what a version is (data summary and hash, structure map,
  output ROI names, text encoder, training budget, commissioning verdict), as JSON and
  Markdown;
* :mod:`~model.registry.registry`: the models folder: immutable versions, the promoted
  pointer (written atomically), the history of promotions and rollbacks;
* :mod:`~model.registry.registry_command`: the ``llmctv models`` sub-commands.

Which checkpoint a worker serves (an explicit checkpoint, else the promoted version, else the
demo model) is decided in :mod:`workers.model_loading`; docs: ``docs/models.md``.
"""
