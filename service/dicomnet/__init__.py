"""DICOM networking: the C-ECHO/C-STORE listener, series assembly and the C-STORE sender.

Modules: :mod:`~service.dicomnet.listener` (Storage SCP), :mod:`~service.dicomnet.assembly`
(series completion), :mod:`~service.dicomnet.storage` (atomic files),
:mod:`~service.dicomnet.sender` (Storage SCU with retries),
:mod:`~service.dicomnet.destinations` (``NAME=AET@host:port``) and
:mod:`~service.dicomnet.command` (the ``dicom-listener`` sub-command). The conformance
statement is ``docs/dicom-conformance.md``.
"""
