"""The faces of llmctv: the HTTP gateway, DICOM networking and orders.

Imports :mod:`workers` (job records, dispatch) and :mod:`model` (DICOM headers, clinical
fields); never torch: the gateway starts without the model's heavy packages.
"""
