"""llmctv model: the text-conditioned 3D contouring network of Oh et al. (2024).

Subpackages: :mod:`model.network` (U-Net, alignment, configuration, checkpoints),
:mod:`model.text` (clinical fields, notes, text encoders, context embedding g),
:mod:`model.imaging` (voxel grids, preprocessing), :mod:`model.dicom` (CT and RTSTRUCT I/O),
:mod:`model.training` (data sets, sampling, trainer), :mod:`model.evaluation` (metrics,
reports), :mod:`model.lab` (phantoms, experiments, figures). :mod:`model.inference` contours
one CT. Never imports :mod:`service` or :mod:`workers`.
"""

__version__ = "0.1.0"
