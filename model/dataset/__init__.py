"""A department's own data: the structure map (its ROI names) and the check of a clinical export.

* :mod:`~model.dataset.structure_map`: the TOML structure map, ROI name -> (structure, side);
* :mod:`~model.dataset.inventory`: what each case of an export holds, and its problems;
* :mod:`~model.dataset.inventory_report`: the inventory as JSON and HTML;
* :mod:`~model.dataset.dataset_command`: ``llmctv dataset check``.
"""
