"""The review station's state, without HTTP: what its pages (:mod:`service.ui`) show and keep.

Modules: :mod:`~service.review_station.state` (``ReviewStation``, one per application: the
sessions and the caches), :mod:`~service.review_station.sessions` (login sessions),
:mod:`~service.review_station.slices` (a job's CT as windowed PNG slices) and
:mod:`~service.review_station.overlays` (its structures as polygons per plane).
"""
