"""Contouring a structure set: the domain of one job.

:func:`model.contouring.structure_set.contour_structure_set` is the one call a job makes; the
engine (:mod:`model.contouring.engine`) is injected. Checks against the clinical record
(:mod:`~model.contouring.consistency`, :mod:`~model.contouring.attention`), ROI names
(:mod:`~model.contouring.naming`) and the preview (:mod:`~model.contouring.preview`) live here.
"""
