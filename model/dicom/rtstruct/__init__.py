"""The RT Structure Set IOD: writing, reading, approving.

One module per part, in the manner of highdicom's ``seg`` package:

* :mod:`~model.dicom.rtstruct.writer`: the IOD writer (:func:`write_rtstruct`), masks to
  contours in patient LPS mm;
* :mod:`~model.dicom.rtstruct.content`: what a structure set holds (:class:`RoiSpec`,
  :class:`WriterInfo`) and the text checks;
* :mod:`~model.dicom.rtstruct.coded_values`: defined terms (RT ROI Interpreted Type...);
* :mod:`~model.dicom.rtstruct.polygons`: exact voxel-mask <-> polygon conversion on one slice;
* :mod:`~model.dicom.rtstruct.reference`: the CT series a structure set refers to;
* :mod:`~model.dicom.rtstruct.reader`: reading structure sets (ours and other systems') and
  rasterising their ROIs onto a CT grid;
* :mod:`~model.dicom.rtstruct.approval`: the Approval module (approved and rejected copies).
"""

from model.dicom.rtstruct.coded_values import RoiGenerationAlgorithm, RoiInterpretedType
from model.dicom.rtstruct.content import RoiSpec, WriterInfo, roi_color
from model.dicom.rtstruct.reference import ReferencedSeries
from model.dicom.rtstruct.writer import build_rtstruct, write_rtstruct

__all__ = [
    "ReferencedSeries",
    "RoiGenerationAlgorithm",
    "RoiInterpretedType",
    "RoiSpec",
    "WriterInfo",
    "build_rtstruct",
    "roi_color",
    "write_rtstruct",
]
