"""Probe: the DICOM listener against the two unauthenticated attacks of issue #15.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_dicom_limits.py [--mib 600]

Runs the listener in a child process on a free loopback port, twice: ``plain`` is pynetdicom
configured as the listener was before the limits (maximum PDU 256 KiB advertised, 10
associations, ACSE timeout 30 s), ``guarded`` is :class:`service.dicomnet.listener.DicomListener`
with its default limits. For each it reports:

- RSS growth of the listener while a client sends a P-DATA-TF header declaring 0xFFFFFFFF bytes
  and then streams ``--mib`` MiB (peak RSS, VmHWM, minus RSS before);
- C-ECHO results while 10 idle TCP connections are held open (5 echoes, pynetdicom client);
- how long an idle connection (that sends nothing) stays open.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import socket
import struct
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path

from pynetdicom import AE

VERIFICATION = "1.2.840.10008.1.1"
AE_TITLE = "LLMCTV"


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def _serve(mode: str, port_queue: multiprocessing.Queue[int], stop: Event) -> None:
    if mode == "plain":
        ae = AE(ae_title=AE_TITLE)
        ae.maximum_pdu_size = 262_144
        ae.maximum_associations = 10
        ae.acse_timeout = 30
        ae.network_timeout = 60
        ae.add_supported_context(VERIFICATION)
        server = ae.start_server(("127.0.0.1", 0), block=False)
        if server is None:
            raise RuntimeError("the probe's DICOM server did not start")
        port_queue.put(int(server.server_address[1]))
        stop.wait()
        ae.shutdown()
        return
    from service.dicomnet.listener import DicomListener

    with tempfile.TemporaryDirectory() as root:
        listener = DicomListener(
            ae_title=AE_TITLE,
            host="127.0.0.1",
            port=0,
            allowed_aets=[],
            transfer_syntaxes=[],
            storage_root=Path(root),
            series_timeout_s=10.0,
            on_complete=lambda series: None,
        )
        listener.start()
        port_queue.put(listener.port)
        stop.wait()
        listener.stop()


def _oversized_pdu(port: int, mib: int) -> int:
    """Send the header and up to ``mib`` MiB; returns MiB sent before the listener refused."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF))
        chunk = bytes(1 << 20)
        try:
            while sent < mib:
                sock.sendall(chunk)
                sent += 1
        except OSError:
            pass
    return sent


def _echo(port: int) -> bool:
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        assoc.release()


def probe(mode: str, mib: int) -> None:
    """Run both probes against one listener mode and print the results."""
    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    stop = multiprocessing.Event()
    child = multiprocessing.Process(target=_serve, args=(mode, ports, stop), daemon=True)
    child.start()
    port = ports.get(timeout=60)
    if child.pid is None:
        raise RuntimeError("the listener process did not start")
    time.sleep(0.5)
    with contextlib.suppress(OSError):  # reset the peak (VmHWM) to the current RSS
        Path(f"/proc/{child.pid}/clear_refs").write_text("5")
    before = _status_kib(child.pid, "VmRSS")
    started = time.monotonic()
    sent = _oversized_pdu(port, mib)
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    peak = _status_kib(child.pid, "VmHWM")
    print(
        f"{mode:8s} oversized PDU: sent {sent} MiB in {elapsed:.1f} s; listener RSS "
        f"{before / 1024:.0f} MB before, peak {peak / 1024:.0f} MB, growth "
        f"{(peak - before) / 1024:.0f} MB"
    )
    time.sleep(6.0)  # the refused connection is gone after the ARTIM timeout
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(10)]
    time.sleep(0.3)
    results = []
    for _ in range(5):
        t0 = time.monotonic()
        results.append((_echo(port), time.monotonic() - t0))
    for sock in idle:
        sock.close()
    ok = sum(r for r, _ in results)
    print(
        f"{mode:8s} C-ECHO with 10 idle sockets held: {ok}/5 succeeded "
        f"({', '.join(f'{t * 1000:.0f} ms' for _, t in results)})"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=40) as sock:
        t0 = time.monotonic()
        try:
            closed = sock.recv(1) == b""
        except OSError:
            closed = True
        waited = time.monotonic() - t0
    print(
        f"{mode:8s} idle connection (no A-ASSOCIATE-RQ): "
        + (f"closed by the listener after {waited:.1f} s" if closed else "still open after 40 s")
    )
    stop.set()
    child.join(15)
    if child.is_alive():
        child.kill()


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=600, help="MiB streamed after the header")
    parser.add_argument("--mode", choices=("plain", "guarded", "both"), default="both")
    args = parser.parse_args()
    for mode in ("plain", "guarded") if args.mode == "both" else (args.mode,):
        probe(mode, args.mib)


if __name__ == "__main__":
    main()
