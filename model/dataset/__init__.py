"""A department's own data: the structure map (its ROI names) and the check of a clinical export.

* :mod:`~model.dataset.structure_map`: the TOML structure map, ROI name -> (structure, side);
* :mod:`~model.dataset.structure_targets`: the map as the ROI rules of training and evaluation;
* :mod:`~model.dataset.inventory`: the check of an export, over its cases
  (:mod:`~model.dataset.clinical_rows` the CSV, :mod:`~model.dataset.case_check` one case,
  :mod:`~model.dataset.structure_placement` its structures on the CT,
  :mod:`~model.dataset.case_inventory` what a case holds and its checks,
  :mod:`~model.dataset.patients` patients across cases, :mod:`~model.dataset.problems` the
  problem codes and thresholds);
* :mod:`~model.dataset.inventory_report`: the inventory as JSON and HTML;
* :mod:`~model.dataset.dataset_command`: ``llmctv dataset check``.
"""
