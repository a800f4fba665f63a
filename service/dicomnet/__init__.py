"""DICOM networking: the C-ECHO/C-STORE listener, series assembly and the C-STORE sender.

Modules: :mod:`~service.dicomnet.listener` (Storage SCP), :mod:`~service.dicomnet.assembly`
(series completion), :mod:`~service.dicomnet.storage` (atomic files),
:mod:`~service.dicomnet.sender` (Storage SCU with retries),
:mod:`~service.dicomnet.destinations` (``NAME=AET@host:port``),
:mod:`~service.dicomnet.events` (what is reported: audit entries and metrics) and
:mod:`~service.dicomnet.settings`. The package imports nothing else of the gateway (an
import-linter contract): settings, the series callback and the event sink come in as
arguments. The ``llmctv dicom-listener`` command is in :mod:`service.cli`. The conformance
statement is ``docs/dicom-conformance.md``.
"""
