"""Benchmark: CPU share of the order desk's loop with many waiting orders.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_order_desk.py [--orders 1500] [--seconds 20]

Writes ``--orders`` waiting orders (each for a study that never arrives) and a few received
CT manifests of other studies into a temporary storage folder, starts the desk's real loop
(one round a second, as in ``llmctv serve``), lets it settle, and reports the process CPU time
over ``--seconds`` of wall time as a share of one core. Nothing else runs in the process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from service.order_desk import OrderDesk
from service.orders import Order, OrderStore
from service.settings import Settings
from workers.jobs import FileJobStore, JobFiles, utcnow

CLINICAL = {
    "diagnoses": [{"side": "left", "surgery": "total_mastectomy", "t_stage": "2", "n_stage": "2"}]
}


class _Idle:
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def describe(self) -> dict[str, object]:
        return {}

    def submit(self, job_id: str) -> None:
        raise RuntimeError("no order should match")


def _populate(root: Path, orders: int, series: int) -> None:
    folder = root / "orders"
    folder.mkdir(parents=True)
    expires = utcnow() + timedelta(hours=24)
    for index in range(orders):
        order = Order(study_instance_uid=f"1.2.3.{index}", clinical=CLINICAL, expires_at=expires)
        (folder / f"{order.order_id}.json").write_text(order.model_dump_json())
    received = root / "dicom" / "received"
    received.mkdir(parents=True)
    for index in range(series):
        manifest_folder = received / f"9.9.{index}" / f"9.9.{index}.1"
        manifest_folder.mkdir(parents=True)
        manifest = {
            "study_instance_uid": f"9.9.{index}",
            "series_instance_uid": f"9.9.{index}.1",
            "accession_number": None,
            "modality": "CT",
            "instance_count": 100,
            "cycle": 1,
            "completed_at": utcnow().isoformat(),
        }
        (manifest_folder / "series.json").write_text(json.dumps(manifest))


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1500)
    parser.add_argument("--series", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _populate(root, args.orders, args.series)
        settings = Settings.from_env(storage_dir=root, dicom_listener=False)
        files = JobFiles(root)
        desk = OrderDesk(settings, OrderStore(root), FileJobStore(files), files, _Idle())
        desk.start()
        time.sleep(3.0)  # the first rounds read every order once
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(args.seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        desk.stop()
        waiting = len(desk.orders.open_orders())
    print(
        f"{waiting} waiting orders, {args.series} received series: desk CPU {cpu * 1000:.0f} ms "
        f"over {wall:.1f} s = {100 * cpu / wall:.2f} % of one core"
    )


if __name__ == "__main__":
    main()
