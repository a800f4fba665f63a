"""DICOM Part 10 file meta information for the files llmctv writes."""

from __future__ import annotations

from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian


def file_meta(sop_class_uid: str, sop_instance_uid: str, version_name: str) -> FileMetaDataset:
    """File meta for an Explicit VR Little Endian instance of ``sop_class_uid``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = version_name
    return meta
