"""Decompression bombs: a deflated instance is inflated in bounded chunks and refused past the
instance cap, over C-STORE and STOW-RS, before anything large is held.

On e766665 a 0.41 MB Deflated Explicit VR instance inflating to 419 MB was stored by STOW-RS
(200) and C-STORE (0x0000), and the gateway's RSS grew from 1.26 to 2.0 GB: the cap counted
compressed bytes. Here the cap is 16 MB and the bomb inflates to 64 MB (sizes kept small so
the test is fast; the code path is the same).
"""

from __future__ import annotations

import io
import tracemalloc
import zlib
from pathlib import Path

import httpx
import pytest
from dicomnet_helpers import AE_TITLE, running_listener
from factories import CtSpec, make_ct_slice
from fake_engine import FakeEngine
from live_server import serve_app
from pydicom.dataset import FileDataset
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian
from pynetdicom import AE

from model.dicom.deflate import check_inflated_size, check_part10_inflated_size
from model.errors import InflatedTooLargeError
from service.app import create_app
from service.dicomnet.pdu_stream import PduLimits
from service.settings import Settings

CAP = 16_000_000
BOMB_BYTES = 64_000_000
TOKEN = "bomb-test-token-0123456789"


def _bomb() -> FileDataset:
    """A CT slice carrying a 64 MB private element of zeros, in the deflated syntax."""
    ds = make_ct_slice(CtSpec(n_slices=1), 0)
    block = ds.private_block(0x0011, "LLMCTV BOMB", create=True)
    block.add_new(0x01, "OB", b"\0" * BOMB_BYTES)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return ds


@pytest.fixture(scope="module")
def bomb_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.dcm"
    _bomb().save_as(path, enforce_file_format=True)
    return path


def test_the_bomb_is_refused_while_holding_little_memory(bomb_file: Path) -> None:
    size = bomb_file.stat().st_size
    assert size < 1_000_000, "the bomb is small on the wire"
    tracemalloc.start()
    with pytest.raises(InflatedTooLargeError) as refused:
        check_part10_inflated_size(bomb_file, CAP)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"\nbomb {size / 1e6:.2f} MB on disk: refused; peak traced memory {peak / 1e6:.1f} MB")
    assert refused.value.code == "dicom_instance_too_large"
    assert peak < 8_000_000, "inflated in bounded chunks, never whole"
    raw = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    small = raw.compress(b"\0" * 1000) + raw.flush()
    assert check_inflated_size(io.BytesIO(small), CAP) == 1000, "an honest instance passes"


def test_stow_rs_refuses_the_bomb(bomb_file: Path, tmp_path: Path) -> None:
    settings = Settings.from_env(
        api_tokens=[f"router:submitter:{TOKEN}"],
        storage_dir=tmp_path,
        dicom_listener=False,
        storage_min_free_bytes=1,
        dicom_max_instance_bytes=CAP,
    )
    boundary = "b0mb"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + bomb_file.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    with serve_app(create_app(settings, engine=FakeEngine())) as url:
        answer = httpx.post(
            f"{url}/dicomweb/studies",
            content=body,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type},
            timeout=60,
        )
    assert answer.status_code == 409, answer.text
    failed = answer.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [0xA700]
    assert not list((tmp_path / "dicom" / "received").rglob("*.dcm")), "nothing stored"


def test_c_store_refuses_the_bomb(tmp_path: Path) -> None:
    limits = PduLimits(max_instance_bytes=CAP)
    with running_listener(tmp_path, pdu_limits=limits) as (listener, _):
        ae = AE(ae_title="TESTER")
        ae.add_requested_context(CTImageStorage, DeflatedExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
        assert assoc.is_established
        status = assoc.send_c_store(_bomb())
        assoc.release()
    assert status.Status == 0xA700, hex(status.Status)
    assert not list(tmp_path.rglob("*.dcm")), "nothing stored"
