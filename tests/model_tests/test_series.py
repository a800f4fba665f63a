"""Tests of model.dicom.series: reading and validating CT series (LPS mm, arrays (k, j, i))."""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from factories import (
    LUNG1_DIR,
    PATIENT_ID,
    PATIENT_NAME,
    CtSpec,
    slice_position,
    stored_pixels,
    write_ct_series,
)
from pydicom.dataset import FileDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG2MPML,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from model.dicom.series import CtSeries, IngestPolicy, read_ct_series
from model.errors import (
    ConfigurationError,
    DicomError,
    InconsistentGeometryError,
    MissingSlicesError,
    MixedSeriesError,
    NoSeriesError,
    NotCtError,
    ObliqueSeriesError,
    TooFewSlicesError,
    UnreadableDicomError,
    UnsupportedPatientPositionError,
    UnsupportedTransferSyntaxError,
)


# --- real data ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lung1() -> CtSeries:
    if not (LUNG1_DIR / "image").is_dir():
        pytest.skip(f"LUNG1 test data not found at {LUNG1_DIR}")
    return read_ct_series(LUNG1_DIR / "image")


def test_lung1_shape_and_hu(lung1: CtSeries) -> None:
    vol = lung1.volume
    assert vol.array.shape == (134, 512, 512)
    assert vol.array.dtype == np.float32
    assert vol.array.min() >= -1100
    assert 1000 < vol.array.max() < 4000
    soft_tissue = np.count_nonzero((vol.array > -100) & (vol.array < 100)) / vol.array.size
    assert 0.05 < soft_tissue < 0.5
    assert vol.grid.spacing == pytest.approx((3.0, 0.9765625, 0.9765625))


def test_lung1_sorted_and_origin_is_lowest_slice(lung1: CtSeries) -> None:
    z = [float(ds.ImagePositionPatient[2]) for ds in lung1.datasets]
    assert z == sorted(z)
    assert np.all(np.diff(z) == pytest.approx(3.0))
    lowest = min(lung1.datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert lung1.volume.grid.origin == pytest.approx(
        [float(v) for v in lowest.ImagePositionPatient]
    )
    last = lung1.volume.grid.index_to_lps([133, 0, 0])
    assert last == pytest.approx([float(v) for v in lung1.datasets[-1].ImagePositionPatient])


def test_lung1_pixels_match_pydicom(lung1: CtSeries) -> None:
    k = 57
    ds = pydicom.dcmread(LUNG1_DIR / "image" / _file_of(lung1.sop_instance_uids[k]))
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(lung1.volume.array[k], expected)


def test_lung1_uids_and_headers_without_pixels(lung1: CtSeries) -> None:
    assert len(set(lung1.sop_instance_uids)) == 134
    assert lung1.sop_instance_uids[0] == lung1.datasets[0].SOPInstanceUID
    assert lung1.series_instance_uid.startswith("1.3.6.1.4.1.32722")
    assert lung1.study_instance_uid == lung1.datasets[-1].StudyInstanceUID
    assert lung1.frame_of_reference_uid == lung1.datasets[3].FrameOfReferenceUID
    assert all("PixelData" not in ds for ds in lung1.datasets)


def _file_of(sop_uid: str) -> str:
    for path in sorted((LUNG1_DIR / "image").iterdir()):
        if pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == sop_uid:
            return path.name
    raise LookupError(sop_uid)


# --- synthetic series that read ----------------------------------------------------------------
def test_synthetic_series_reads(tmp_path: Path) -> None:
    spec = CtSpec()
    write_ct_series(tmp_path, spec)
    ct = read_ct_series(tmp_path)
    assert ct.volume.array.shape == (spec.n_slices, spec.rows, spec.columns)
    assert ct.volume.grid.origin == pytest.approx(spec.origin)
    assert ct.volume.grid.spacing == pytest.approx((2.5, 0.8, 0.7))
    for k in range(spec.n_slices):
        np.testing.assert_array_equal(ct.volume.array[k], stored_pixels(spec, k) - 1024.0)
    assert [int(ds.InstanceNumber) for ds in ct.datasets] == list(range(1, spec.n_slices + 1))
    assert ct.series_instance_uid == spec.series_uid
    assert ct.frame_of_reference_uid == spec.frame_uid


def test_list_of_files_and_rescale_per_slice(tmp_path: Path) -> None:
    def edit(k: int, ds: FileDataset) -> None:
        ds.RescaleSlope, ds.RescaleIntercept = 0.5 * (k + 1), -1000 + k

    spec = CtSpec()
    paths = write_ct_series(tmp_path, spec, edit=edit)
    ct = read_ct_series(reversed(paths))
    for k in range(spec.n_slices):
        expected = stored_pixels(spec, k) * 0.5 * (k + 1) + (-1000 + k)
        np.testing.assert_allclose(ct.volume.array[k], expected, rtol=1e-6)


@pytest.mark.parametrize(
    "orientation",
    [(-1, 0, 0, 0, -1, 0), (-1, 0, 0, 0, 1, 0)],
    ids=["prone", "feet-first"],
)
def test_other_axial_orientations_map_indices_to_positions(
    tmp_path: Path, orientation: tuple[float, ...]
) -> None:
    spec = CtSpec(orientation=tuple(float(v) for v in orientation))
    write_ct_series(tmp_path, spec)
    ct = read_ct_series(tmp_path)
    grid = ct.volume.grid
    for k, ds in enumerate(ct.datasets):
        assert grid.index_to_lps([k, 0, 0]) == pytest.approx(
            list(map(float, ds.ImagePositionPatient))
        )
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    corner = np.asarray(ct.datasets[0].ImagePositionPatient, dtype=float)
    corner += 2 * 0.8 * col + 3 * 0.7 * row  # row j=2, column i=3
    assert grid.index_to_lps([0, 2, 3]) == pytest.approx(corner)


def test_a_transposed_storage_is_refused_as_decubitus(tmp_path: Path) -> None:
    """Rows along the patient's y axis: how scanners store a patient lying on a side."""
    write_ct_series(tmp_path, CtSpec(orientation=(0.0, 1.0, 0.0, 1.0, 0.0, 0.0)))
    with pytest.raises(UnsupportedPatientPositionError) as refused:
        read_ct_series(tmp_path)
    assert refused.value.code == "unsupported_patient_position"


@pytest.mark.parametrize("bits_stored", [12, 16])
def test_signed_pixels(tmp_path: Path, bits_stored: int) -> None:
    spec = CtSpec(signed=True, bits_stored=bits_stored)
    write_ct_series(tmp_path, spec)
    ct = read_ct_series(tmp_path)
    for k, ds in enumerate(ct.datasets):
        np.testing.assert_array_equal(ct.volume.array[k], stored_pixels(spec, k))
        assert ds.PixelRepresentation == 1
    assert ct.volume.array.min() < 0


def test_named_series_among_two(tmp_path: Path) -> None:
    first, second = CtSpec(), CtSpec(seed=1)
    write_ct_series(tmp_path / "a", first)
    write_ct_series(tmp_path / "b", second)
    ct = read_ct_series(tmp_path, series_instance_uid=second.series_uid)
    assert ct.series_instance_uid == second.series_uid
    with pytest.raises(NoSeriesError):
        read_ct_series(tmp_path, series_instance_uid=generate_uid())


def test_headers_outlive_the_input_files(tmp_path: Path) -> None:
    def edit(k: int, ds: FileDataset) -> None:
        ds.add_new(0x00191010, "OB", bytes(100_000))  # a large private blob, read deferred
        ds.private_block(0x0019, "TEST", create=True)

    write_ct_series(tmp_path / "in", CtSpec(), edit=edit)
    ct = read_ct_series(tmp_path / "in")
    shutil.rmtree(tmp_path / "in")
    for ds in ct.datasets:
        assert "PixelData" not in ds
        assert [elem.tag for elem in ds]
        assert ds.SOPInstanceUID


def test_localizer_in_series_is_ignored(tmp_path: Path) -> None:
    def edit(k: int, ds: FileDataset) -> None:
        if k == 0:
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]

    write_ct_series(tmp_path, CtSpec(n_slices=7), edit=edit)
    assert read_ct_series(tmp_path).volume.array.shape[0] == 6


def test_repeated_copy_of_a_file_is_ignored(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, CtSpec())
    shutil.copy(paths[2], tmp_path / "copy.dcm")
    assert read_ct_series(tmp_path).volume.array.shape[0] == 6


def test_non_dicom_file_is_skipped_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_ct_series(tmp_path, CtSpec())
    (tmp_path / "notes.txt").write_text("not a DICOM file")
    with caplog.at_level(logging.WARNING, logger="model.dicom.series"):
        ct = read_ct_series(tmp_path)
    assert ct.volume.array.shape[0] == 6
    assert "not DICOM" in caplog.text
    with pytest.raises(UnreadableDicomError):
        read_ct_series(tmp_path, policy=IngestPolicy(skip_non_dicom=False))


def test_files_without_preamble_and_file_meta(tmp_path: Path) -> None:
    if shutil.which("dcmconv") is None:
        pytest.skip("dcmconv (dcmtk) is not installed")
    spec = CtSpec()
    (tmp_path / "raw").mkdir()
    for path in write_ct_series(tmp_path / "part10", spec):
        subprocess.run(
            ["dcmconv", "-F", "+ti", str(path), str(tmp_path / "raw" / path.name)], check=True
        )
    (tmp_path / "raw" / "fake.bin").write_bytes(b"\x08\x00" + bytes(range(200)))
    assert (tmp_path / "raw" / "fake.bin").read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(
        read_ct_series(tmp_path / "raw").volume.array,
        read_ct_series(tmp_path / "part10").volume.array,
    )


def test_logs_and_errors_never_name_the_patient(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_ct_series(tmp_path / "a", CtSpec())
    write_ct_series(tmp_path / "b", CtSpec())
    (tmp_path / "junk.bin").write_bytes(b"\x01\x02junk")
    with caplog.at_level(logging.DEBUG), pytest.raises(MixedSeriesError) as info:
        read_ct_series(tmp_path)
    with caplog.at_level(logging.DEBUG):
        read_ct_series(tmp_path / "a")
    for text in (caplog.text, str(info.value)):
        assert PATIENT_NAME.split("^")[0] not in text
        assert PATIENT_ID not in text


# --- refusals ----------------------------------------------------------------------------------
def test_mr_is_not_ct(tmp_path: Path) -> None:
    write_ct_series(tmp_path, CtSpec(modality="MR"))
    with pytest.raises(NotCtError):
        read_ct_series(tmp_path)


def test_ct_slice_of_another_modality_in_series(tmp_path: Path) -> None:
    def edit(k: int, ds: FileDataset) -> None:
        if k == 3:
            ds.Modality = "MR"

    write_ct_series(tmp_path, CtSpec(), edit=edit)
    with pytest.raises(NotCtError):
        read_ct_series(tmp_path)


def test_two_ct_series_unnamed(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "a", CtSpec())
    write_ct_series(tmp_path / "b", CtSpec(seed=1))
    with pytest.raises(MixedSeriesError):
        read_ct_series(tmp_path)


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "FrameOfReferenceUID"])
def test_one_series_two_studies_or_frames(tmp_path: Path, keyword: str) -> None:
    other = generate_uid()

    def edit(k: int, ds: FileDataset) -> None:
        if k == 4:
            setattr(ds, keyword, other)

    write_ct_series(tmp_path, CtSpec(), edit=edit)
    with pytest.raises(MixedSeriesError):
        read_ct_series(tmp_path)


def test_duplicated_positions(tmp_path: Path) -> None:
    spec = CtSpec(n_slices=8)

    def edit(k: int, ds: FileDataset) -> None:
        if k >= 4:  # a second acquisition of slices 0..3
            ds.ImagePositionPatient = list(slice_position(spec, k - 4))

    write_ct_series(tmp_path, spec, edit=edit)
    with pytest.raises(MixedSeriesError):
        read_ct_series(tmp_path)


@pytest.mark.parametrize(
    "orientation",
    [
        (1, 0, 0, 0, np.cos(np.radians(10)), np.sin(np.radians(10))),
        (
            np.cos(np.radians(3)),
            np.sin(np.radians(3)),
            0,
            -np.sin(np.radians(3)),
            np.cos(np.radians(3)),
            0,
        ),
        (0, 1, 0, 0, 0, -1),
        (1, 0, 0, 0, 0, -1),
    ],
    ids=["tilted-10deg", "rotated-in-plane-3deg", "sagittal", "coronal"],
)
def test_oblique_or_non_axial_orientation(tmp_path: Path, orientation: tuple[float, ...]) -> None:
    write_ct_series(tmp_path, CtSpec(orientation=tuple(float(v) for v in orientation)))
    with pytest.raises(ObliqueSeriesError):
        read_ct_series(tmp_path)


def test_tilted_positions_with_axial_orientation(tmp_path: Path) -> None:
    spec = CtSpec()
    shift = spec.slice_spacing * np.tan(np.radians(15))

    def edit(k: int, ds: FileDataset) -> None:
        x, y, z = slice_position(spec, k)
        ds.ImagePositionPatient = [x, y + k * shift, z]

    write_ct_series(tmp_path, spec, edit=edit)
    with pytest.raises(ObliqueSeriesError):
        read_ct_series(tmp_path)


def test_gantry_tilt_tag(tmp_path: Path) -> None:
    write_ct_series(tmp_path, CtSpec(), edit=lambda k, ds: setattr(ds, "GantryDetectorTilt", 12))
    with pytest.raises(ObliqueSeriesError):
        read_ct_series(tmp_path)


def test_tiny_orientation_noise_is_accepted(tmp_path: Path) -> None:
    orientation = (1.0, 1e-5, -1.224647e-16, 0.0, 0.99999999, 1e-5)
    write_ct_series(tmp_path, CtSpec(orientation=orientation))
    assert read_ct_series(tmp_path).volume.array.shape[0] == 6


def test_removed_middle_slice(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, CtSpec(n_slices=8))
    ordered = sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    ordered[4].unlink()
    with pytest.raises(MissingSlicesError):
        read_ct_series(tmp_path)


def test_irregular_spacing(tmp_path: Path) -> None:
    spec = CtSpec(n_slices=8)

    def edit(k: int, ds: FileDataset) -> None:
        x, y, z = slice_position(spec, k)
        ds.ImagePositionPatient = [x, y, z + (0.8 if k >= 4 else 0.0)]

    write_ct_series(tmp_path, spec, edit=edit)
    with pytest.raises(InconsistentGeometryError):
        read_ct_series(tmp_path)


def test_inconsistent_pixel_spacing(tmp_path: Path) -> None:
    def edit(k: int, ds: FileDataset) -> None:
        if k == 2:
            ds.PixelSpacing = [0.8, 0.75]

    write_ct_series(tmp_path, CtSpec(), edit=edit)
    with pytest.raises(InconsistentGeometryError):
        read_ct_series(tmp_path)


def test_inconsistent_matrix_size(tmp_path: Path) -> None:
    spec = CtSpec()
    odd = replace(spec, rows=10)
    write_ct_series(tmp_path, spec)
    write_ct_series(tmp_path / "odd", replace(odd, n_slices=1, origin=(-4.0, -6.0, 5.0)))
    with pytest.raises(InconsistentGeometryError):
        read_ct_series(tmp_path)


def test_too_few_slices(tmp_path: Path) -> None:
    write_ct_series(tmp_path, CtSpec(n_slices=4))
    with pytest.raises(TooFewSlicesError):
        read_ct_series(tmp_path)
    assert read_ct_series(tmp_path, policy=IngestPolicy(min_slices=4)).volume.array.shape[0] == 4


def test_missing_position(tmp_path: Path) -> None:
    def edit(k: int, ds: FileDataset) -> None:
        if k == 1:
            del ds.ImagePositionPatient

    write_ct_series(tmp_path, CtSpec(), edit=edit)
    with pytest.raises(DicomError):
        read_ct_series(tmp_path)


@pytest.mark.parametrize("where", ["file-meta", "mid-header", "pixel-data"])
def test_truncated_file(tmp_path: Path, where: str) -> None:
    paths = write_ct_series(tmp_path, CtSpec())
    data = paths[3].read_bytes()
    header_end = len(data) - 12 * 10 * 2 - 12  # PixelData element: 12-byte header + values
    cut = {"file-meta": 200, "mid-header": header_end // 2 + 300, "pixel-data": len(data) - 50}
    paths[3].write_bytes(data[: cut[where]])
    with pytest.raises(UnreadableDicomError):
        read_ct_series(tmp_path)


def test_nothing_readable(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.bin").write_bytes(bytes(range(256)))
    with pytest.raises(NoSeriesError):
        read_ct_series(tmp_path)
    with pytest.raises(NoSeriesError):
        read_ct_series(tmp_path / "missing")


def test_no_image_series(tmp_path: Path) -> None:
    from factories import make_rtstruct

    make_rtstruct(generate_uid(), {}).save_as(tmp_path / "rs.dcm", enforce_file_format=True)
    with pytest.raises(NoSeriesError):
        read_ct_series(tmp_path)


def test_policy_validation() -> None:
    with pytest.raises(ConfigurationError):
        IngestPolicy(min_slices=1)
    with pytest.raises(ConfigurationError):
        IngestPolicy(max_gap_factor=1.0)


# --- transfer syntaxes -------------------------------------------------------------------------
def _dcmtk(tool: str, *args: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} (dcmtk) is not installed")
    subprocess.run([tool, *args], check=True, capture_output=True)


def _compress(src: Path, dst: Path, syntax: str) -> None:
    if syntax == "j2k":
        ds = pydicom.dcmread(src)
        try:
            ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
        except (RuntimeError, ImportError) as exc:
            pytest.skip(f"no JPEG 2000 encoder: {exc}")
        ds.save_as(dst)
        return
    tool, flags = {
        "jpeg": ("dcmcjpeg", ["+e1"]),  # lossless, first-order prediction (process 14 SV1)
        "jpegls": ("dcmcjpls", ["+el"]),
        "rle": ("dcmcrle", []),
        "implicit": ("dcmconv", ["+ti"]),
        "big-endian": ("dcmconv", ["+tb"]),
        "deflated": ("dcmconv", ["+td"]),
    }[syntax]
    _dcmtk(tool, *flags, str(src), str(dst))


@pytest.mark.parametrize(
    ("syntax", "uid"),
    [
        ("jpeg", JPEGLosslessSV1),
        ("jpegls", JPEGLSLossless),
        ("rle", RLELossless),
        ("j2k", JPEG2000Lossless),
        ("implicit", ImplicitVRLittleEndian),
        ("big-endian", ExplicitVRBigEndian),
        ("deflated", DeflatedExplicitVRLittleEndian),
    ],
)
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_transfer_syntaxes_decode_to_original(
    tmp_path: Path, syntax: str, uid: str, signed: bool
) -> None:
    spec = CtSpec(signed=signed, rows=192, columns=176)  # > 64 KB: deferred reads
    paths = write_ct_series(tmp_path / "plain", spec)
    (tmp_path / "packed").mkdir()
    for path in paths:
        _compress(path, tmp_path / "packed" / path.name, syntax)
    plain, packed = read_ct_series(tmp_path / "plain"), read_ct_series(tmp_path / "packed")
    assert packed.datasets[0].file_meta.TransferSyntaxUID == uid
    np.testing.assert_array_equal(packed.volume.array, plain.volume.array)
    assert packed.sop_instance_uids == plain.sop_instance_uids


def test_unsupported_transfer_syntax(tmp_path: Path) -> None:
    def edit(k: int, ds: FileDataset) -> None:
        ds.file_meta.TransferSyntaxUID = MPEG2MPML
        ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])

    write_ct_series(tmp_path, CtSpec(), edit=edit)
    with pytest.raises(UnsupportedTransferSyntaxError):
        read_ct_series(tmp_path)


def test_corrupt_compressed_pixels(tmp_path: Path) -> None:
    def edit(k: int, ds: FileDataset) -> None:
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.PixelData = encapsulate([b"\xff\xd8" + bytes(62)])

    write_ct_series(tmp_path, CtSpec(), edit=edit)
    with pytest.raises(UnreadableDicomError):
        read_ct_series(tmp_path)


# --- plausibility limits (issue 15: absurd geometry fails at inspection) ---------------------
def test_huge_declared_matrix_is_refused_without_allocating(tmp_path: Path) -> None:
    """Rows/Columns 65535 with tiny pixel data: refused from the headers, no 80 GiB array."""
    import tracemalloc

    from model.dicom.series import inspect_ct_series
    from model.errors import ImplausibleGeometryError

    def huge(k: int, ds: FileDataset) -> None:
        ds.Rows = ds.Columns = 65535

    write_ct_series(tmp_path, CtSpec(n_slices=5), edit=huge)
    tracemalloc.start()
    try:
        for reader in (inspect_ct_series, read_ct_series):
            with pytest.raises(ImplausibleGeometryError, match="65535x65535"):
                reader(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20


def test_plausibility_limits_come_from_the_policy(tmp_path: Path) -> None:
    from model.errors import ImplausibleGeometryError

    write_ct_series(tmp_path, CtSpec(n_slices=5, rows=40, columns=40, pixel_spacing=(2.0, 2.0)))
    read_ct_series(tmp_path)  # 80 mm: plausible by default
    with pytest.raises(ImplausibleGeometryError, match="80 mm along axis j"):
        read_ct_series(tmp_path, policy=IngestPolicy(max_extent_mm=50.0))
    with pytest.raises(ImplausibleGeometryError, match=r"slice spacing is 2\.5 mm"):
        read_ct_series(tmp_path, policy=IngestPolicy(max_spacing_mm=2.2))
    with pytest.raises(ImplausibleGeometryError, match=r"PixelSpacing \(rows\) is 2 mm"):
        read_ct_series(tmp_path, policy=IngestPolicy(min_spacing_mm=2.2, max_spacing_mm=9.0))
    with pytest.raises(ImplausibleGeometryError, match="40x40 matrix"):
        read_ct_series(tmp_path, policy=IngestPolicy(max_matrix=32))
    with pytest.raises(ConfigurationError):
        IngestPolicy(min_spacing_mm=5.0, max_spacing_mm=1.0)


def test_wrong_value_count_is_invalid_dicom_not_a_crash(tmp_path: Path) -> None:
    write_ct_series(
        tmp_path, CtSpec(n_slices=5), edit=lambda k, ds: setattr(ds, "PixelSpacing", [0.7])
    )
    with pytest.raises(DicomError, match="PixelSpacing must hold 2 values"):
        read_ct_series(tmp_path)
