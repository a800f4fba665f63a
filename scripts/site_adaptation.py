"""A synthetic department adapts, commissions and deploys its own model (issue 24), end to end.

The department (phantom site ``S``, ``model/lab/department.py``) treats the internal mammary
nodes only for N2-N3 and draws its supraclavicular CTV 15 mm higher than the spec; its
planning system exports CT + RTSTRUCT written by rt-utils, with its own ROI names, PTVs, BODY,
a helper ring and the union. Steps, each through the ``llmctv`` command a physicist runs:

1. export a training set and an unseen test set (other patients) of the department;
2. ``llmctv dataset check`` both with the site's structure map;
3. ``llmctv train --init-from checkpoints/demo --structure-map`` (fine-tune, time budget);
4. ``llmctv commission``: the fine-tuned candidate against the shipped model on the test set,
   and the shipped model alone (its own report), with the site's acceptance file;
5. ``llmctv models register`` both, the shipped one promoted (the department's status quo);
   then ``llmctv serve`` runs, and over HTTP the candidate is promoted, a CT contoured, the
   promotion rolled back and the CT contoured again.

Every step's output stays in ``OUT`` and is reused when present (``--fresh`` starts over),
so a long run can be continued. Prints a table and writes ``OUT/summary.json``.

Usage: python scripts/site_adaptation.py [--preset full|tiny] [--out out/site] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from demo_service import running_service  # noqa: E402

from model.dicom.rtstruct.reader import read_structure_set  # noqa: E402
from model.lab.department import SITE_OUTPUT_NAMES, SITE_STRUCTURE_MAP  # noqa: E402
from model.text.clinical import read_clinical_csv  # noqa: E402

SHIPPED = ROOT / "checkpoints" / "demo"
PRESETS: dict[str, dict[str, Any]] = {
    # What issue 24 asks: 24 cases, at most 20 minutes on a 2-core CPU.
    "full": {
        "train_cases": 24,
        "test_cases": 24,
        "scale": 0.5,
        "epochs": 16,
        "steps": 40,
        "max_minutes": 20.0,
        "val_fraction": 0.125,
        "lr": 3e-4,
        "labels": "partial",
        "bootstrap": 1000,
        "network_report": True,
    },
    # The same path in about a minute, for the test suite (numbers meaningless).
    "tiny": {
        "train_cases": 4,
        "test_cases": 3,
        "scale": 0.25,
        "epochs": 1,
        "steps": 2,
        "max_minutes": 5.0,
        "val_fraction": 0.25,
        "lr": 3e-4,
        "labels": "partial",
        "bootstrap": 50,
        "network_report": False,
    },
}
SEED = 2400
TEST_FIRST = 1001  # the test set's first case index: other patients than the training set's

ACCEPTANCE = """\
# The synthetic department's acceptance criteria (scripts/site_adaptation.py).
[acceptance]
statistic = "mean"
min_cases = 3
dice = 0.80
surface_dice_3mm = 0.75

[acceptance.ctv]
hd95_mm = 12.65

[acceptance.imn]
# A small structure: 8 mm nodes, whose Dice a 2 mm error halves.
dice = 0.60
surface_dice_3mm = 0.65

[metrics]
apl_tolerance_mm = 2.0
"""
#: How the site's N-stage rule enters the training (``--labels``). ``partial``: a structure the
#: rule does not draw for a case's stage is unlabelled there (the served rule removes it) and
#: drawn there by the shipped model before training (its anatomy is not forgotten: no
#: training case shows a chest wall's IMN), with counterfactual N0/N1mi and N1 notes paired
#: with their CT; ``background``: the counterfactual notes alone teach the network to leave it
#: out (session 8's runs).
LABELS = {
    "partial": [
        "--partial-labels",
        "--teacher-labels",
        "--convention-variants",
        "--pair-fraction",
        "0.5",
    ],
    "background": ["--convention-variants", "--pair-fraction", "0.5"],
}
OVERRIDE = "status quo: the shipped model in use before site commissioning (site memo 24)"


def llmctv(*args: str, log: Path | None = None) -> str:
    """Run ``llmctv ARGS``; returns stdout (stderr to ``log``); raises with it on failure."""
    command = [str(Path(sys.executable).parent / "llmctv"), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if log is not None:
        log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        raise RuntimeError(f"llmctv {' '.join(args[:2])} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


def export(out: Path, preset: dict[str, Any]) -> dict[str, Any]:
    """Step 1: the training and test exports (skipped when present)."""
    timings = {}
    for name, first, cases in (
        ("train", 1, preset["train_cases"]),
        ("test", TEST_FIRST, preset["test_cases"]),
    ):
        folder = out / name
        if not (folder / "clinical.csv").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            t0 = time.perf_counter()
            llmctv(
                "phantoms", "--site", "S", "--department-export", str(first),
                "--cases", str(cases), "--seed", str(SEED), "--scale", str(preset["scale"]),
                "--out", str(folder),
            )  # fmt: skip
            timings[name] = round(time.perf_counter() - t0, 1)
    (out / "site.toml").write_text(SITE_STRUCTURE_MAP, encoding="utf-8")
    (out / "acceptance.toml").write_text(ACCEPTANCE, encoding="utf-8")
    return {"seconds": timings}


def dataset_check(out: Path) -> dict[str, Any]:
    """Step 2: ``llmctv dataset check`` of both exports; problems by code."""
    result = {}
    for name in ("train", "test"):
        report = out / f"check-{name}"
        if not (report / "inventory.json").is_file():
            llmctv("dataset", "check", str(out / name), "--structure-map", str(out / "site.toml"),
                   "--out", str(report))  # fmt: skip
        inventory = json.loads((report / "inventory.json").read_text(encoding="utf-8"))
        summary = inventory["summary"]
        result[name] = {
            "verdict": inventory["verdict"],
            "blocking": summary["blocking"],
            "warnings": summary["warnings"],
            "codes": summary.get("codes", {}),
            "report": str(report / "inventory.html"),
        }
    return result


def fine_tune(out: Path, preset: dict[str, Any]) -> dict[str, Any]:
    """Step 3: fine-tune the shipped model on the training export (wall time measured)."""
    run = out / "run"
    record = out / "run.json"
    if (run / "best" / "model.safetensors").is_file() and record.is_file():
        done: dict[str, Any] = json.loads(record.read_text(encoding="utf-8"))
        return done
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    stdout = llmctv(
        "train", "--data", str(out / "train"), "--structure-map", str(out / "site.toml"),
        "--init-from", str(SHIPPED), "--text-encoder", "smollm2", "--preset", "cpu",
        "--spacing", "6", "4", "4", "--epochs", str(preset["epochs"]),
        "--steps-per-epoch", str(preset["steps"]), "--batch-size", "2", "--lr", str(preset["lr"]),
        "--val-fraction", str(preset["val_fraction"]), "--mirror", "0.3", "--seed", "0",
        *LABELS[preset["labels"]],
        "--device", "cpu", "--max-minutes", str(preset["max_minutes"]), "--out", str(run),
        log=out / "train.log",
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    rate = re.search(r"([0-9.]+) crops/s", stdout)
    history = json.loads((run / "history.json").read_text(encoding="utf-8"))
    done = {
        "wall_seconds": round(seconds, 1),
        "wall_minutes": round(seconds / 60.0, 2),
        "crops_per_second": float(rate.group(1)) if rate else None,
        "epochs_run": len(history),
        "best_val_dice": max((h["val_dice"] for h in history), default=None),
        "train_cases": len(read_clinical_csv(out / "train" / "clinical.csv")),  # train + val
    }
    record.write_text(json.dumps(done, indent=1) + "\n", encoding="utf-8")
    return done


def _n1_imn(report: dict[str, Any], model: str) -> tuple[int, int]:
    """(N1 cases with an IMN drawn, N1 cases) for ``model`` in a commissioning report."""
    n1 = [c for c in report["cases"] if c["categories"]["n_stage"] == "N1"]
    drawn = sum(1 for c in n1 if c["models"][model]["imn"]["predicted_present"])
    return drawn, len(n1)


def commission(out: Path, preset: dict[str, Any]) -> dict[str, Any]:
    """Step 4: the candidate against the shipped model, and the shipped model alone; with
    the full preset also the candidate's network without the site's N-stage rule."""
    common = ["--data", str(out / "test"), "--structure-map", str(out / "site.toml"),
              "--acceptance", str(out / "acceptance.toml"),
              "--bootstrap", str(preset["bootstrap"])]  # fmt: skip
    candidate = f"candidate={out / 'run' / 'best'}"
    runs = {
        "candidate": ["--model", candidate, "--model", f"current={SHIPPED}"],
        "shipped": ["--model", f"candidate={SHIPPED}"],
    }
    if preset["network_report"]:  # the fine-tuned network without the site's N-stage rule
        runs["network"] = [*runs["candidate"], "--without-stage-rule"]
    result: dict[str, Any] = {}
    for name, models in runs.items():
        folder = out / f"report-{name}"
        if not (folder / "report.json").is_file():
            llmctv("commission", *models, *common, "--out", str(folder))
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        results = report["summary"]["results"]
        entry: dict[str, Any] = {
            "verdict": report["verdict"],
            "report": str(folder / "report.html"),
        }
        for model, per_structure in results.items():
            entry[model] = {
                structure: {
                    "verdict": r["verdict"],
                    "dice": r["metrics"]["dice"]["mean"],
                    "dice_ci": [r["metrics"]["dice"]["ci_low"], r["metrics"]["dice"]["ci_high"]],
                    "hd95_mm": r["metrics"]["hd95_mm"]["mean"],
                    "surface_dice_3mm": r["metrics"]["surface_dice_3mm"]["mean"],
                    "spurious": r["counts"]["spurious"],
                    "missed": r["counts"]["missed"],
                }
                for structure, r in per_structure.items()
            }
            drawn, n1 = _n1_imn(report, model)
            entry[model]["imn_drawn_for_n1"] = {"cases": drawn, "of": n1}
        result[name] = entry
    return result


def _contour(url: str, token: str, case: Path, clinical: dict[str, Any]) -> dict[str, Any]:
    """Submit one CT over HTTP, wait; the job's model version and its RTSTRUCT's ROI names."""
    headers = {"Authorization": f"Bearer {token}"}
    parts = [("files", (p.name, p.read_bytes(), "application/dicom"))
             for p in sorted((case / "CT").iterdir())]  # fmt: skip
    answer = httpx.post(f"{url}/contour", files=parts, data={"clinical": json.dumps(clinical)},
                        headers=headers, timeout=120)  # fmt: skip
    answer.raise_for_status()
    links = answer.json()
    deadline = time.monotonic() + 600
    while True:
        status: dict[str, Any] = httpx.get(f"{url}/jobs/{links['job_id']}", headers=headers).json()
        if status["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    if status["status"] != "succeeded":
        return {"status": status["status"], "error": status.get("error")}
    rtstruct = case.parent.parent / f"job-{links['job_id']}.dcm"
    rtstruct.write_bytes(httpx.get(url + links["rtstruct_url"], headers=headers).content)
    names = [roi.name for roi in read_structure_set(rtstruct).rois]
    return {
        "status": "succeeded",
        "model_version": status.get("model_version"),
        "rois": names,
        "warnings": status.get("warnings", []),
        "attention": status.get("attention", []),
    }


def deploy(out: Path) -> dict[str, Any]:
    """Step 5: register both models, promote and roll back through the running service."""
    models = out / "models"
    shutil.rmtree(models, ignore_errors=True)
    base = ["--models-dir", str(models), "--by", "physicist"]
    llmctv("models", "register", str(SHIPPED), "--name", "shipped",
           "--report", str(out / "report-shipped"), *base)  # fmt: skip
    names = [f"--roi-name={s}={n}" for s, n in SITE_OUTPUT_NAMES.items()]
    llmctv("models", "register", str(out / "run" / "best"), "--name", "site",
           "--report", str(out / "report-candidate"), "--structure-map", str(out / "site.toml"),
           "--side-form= Lt/ Rt", *names, *base)  # fmt: skip
    llmctv("models", "promote", "shipped-v1", "--override-reason", OVERRIDE, *base)
    test = out / "test"
    case_id, record = next(iter(read_clinical_csv(test / "clinical.csv").items()))
    # The case's CT with an N1 note: the site draws no internal mammary nodes for N1.
    diagnoses = tuple(d.model_copy(update={"n_stage": "1"}) for d in record.diagnoses)
    record = record.model_copy(update={"diagnoses": diagnoses})
    clinical = record.model_dump(mode="json")
    storage = out / "service"
    shutil.rmtree(storage, ignore_errors=True)
    result: dict[str, Any] = {"case": case_id, "note": record.prompt_text()}
    with running_service(storage, SHIPPED, models_dir=models) as (url, token):
        admin = {"Authorization": f"Bearer {token}"}
        promote = httpx.post(f"{url}/models/site-v1/promote", headers=admin, timeout=30)
        result["promote_status"] = promote.status_code
        if promote.status_code == 409:  # the candidate's report FAILed (tiny preset)
            reason = {"override_reason": "tiny preset: the path, not the model"}
            promote = httpx.post(
                f"{url}/models/site-v1/promote", headers=admin, timeout=30, json=reason
            )
            result["promote_override_status"] = promote.status_code
        result["promoted"] = httpx.get(f"{url}/models", headers=admin).json()["promoted"]
        result["after_promote"] = _contour(url, token, test / case_id, clinical)
        back = httpx.post(f"{url}/models/rollback", headers=admin, timeout=30)
        result["rollback_status"] = back.status_code
        result["after_rollback_promoted"] = httpx.get(f"{url}/models", headers=admin).json()[
            "promoted"
        ]
        result["after_rollback"] = _contour(url, token, test / case_id, clinical)
    return result


def _fmt(value: Any, digits: int = 3) -> str:
    return (
        "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    )


def table(summary: dict[str, Any]) -> str:
    """The Markdown table of the measured numbers."""
    tune, rep = summary["fine_tune"], summary["commission"]["candidate"]
    lines = [
        f"dataset check: train {summary['check']['train']['verdict']} "
        f"({summary['check']['train']['blocking']} blocking, "
        f"{summary['check']['train']['warnings']} warnings), test "
        f"{summary['check']['test']['verdict']} ({summary['check']['test']['blocking']} "
        f"blocking, {summary['check']['test']['warnings']} warnings)",
        f"fine-tune: {tune['train_cases']} cases, {tune['wall_minutes']} min wall, "
        f"{_fmt(tune['crops_per_second'], 2)} crops/s, {tune['epochs_run']} epochs, "
        f"best validation Dice {_fmt(tune['best_val_dice'])}",
        "",
        "| structure | adapted Dice [95% CI] | HD95 mm | sDSC 3 mm | verdict | shipped Dice | "
        "HD95 mm | verdict (own report) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    shipped_own = summary["commission"]["shipped"]["candidate"]
    for structure, r in rep["candidate"].items():
        if structure == "imn_drawn_for_n1":
            continue
        s = rep["current"][structure]
        lo, hi = r["dice_ci"]
        lines.append(
            f"| {structure} | {_fmt(r['dice'])} [{_fmt(lo)}, {_fmt(hi)}] | "
            f"{_fmt(r['hd95_mm'], 1)} | {_fmt(r['surface_dice_3mm'])} | {r['verdict']} | "
            f"{_fmt(s['dice'])} | {_fmt(s['hd95_mm'], 1)} | {shipped_own[structure]['verdict']} |"
        )
    a, c = rep["candidate"]["imn_drawn_for_n1"], rep["current"]["imn_drawn_for_n1"]
    lines += [
        "",
        f"IMN drawn for N1: adapted {a['cases']}/{a['of']}, shipped {c['cases']}/{c['of']}",
        f"verdicts: adapted {rep['verdict']}, "
        f"shipped {summary['commission']['shipped']['verdict']}",
    ]
    network = summary["commission"].get("network")
    if network is not None:
        n = network["candidate"]
        lines.append(
            f"adapted network without the site rule: verdict {network['verdict']}, IMN Dice "
            f"{_fmt(n['imn']['dice'])}, IMN drawn for N1 {n['imn_drawn_for_n1']['cases']}/"
            f"{n['imn_drawn_for_n1']['of']}, CTV Dice {_fmt(n['ctv']['dice'])}"
        )
    d = summary["deploy"]
    lines.append(
        f"service: promote site-v1 -> HTTP {d['promote_status']}, job model "
        f"{d['after_promote'].get('model_version')}; rollback -> HTTP {d['rollback_status']}, "
        f"job model {d['after_rollback'].get('model_version')}"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "site")
    parser.add_argument("--fresh", action="store_true", help="start over (delete OUT)")
    parser.add_argument("--lr", type=float, help="fine-tuning learning rate (presets: 3e-4)")
    parser.add_argument("--labels", choices=sorted(LABELS), help="the rule in training")
    args = parser.parse_args()
    preset = dict(PRESETS[args.preset])
    for key in ("lr", "labels"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    out = args.out.resolve()
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"preset": args.preset, **preset}
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("export", lambda: export(out, preset)),
        ("check", lambda: dataset_check(out)),
        ("fine_tune", lambda: fine_tune(out, preset)),
        ("commission", lambda: commission(out, preset)),
        ("deploy", lambda: deploy(out)),
    ]
    for step, run in steps:
        t0 = time.perf_counter()
        summary[step] = run()
        print(f"{step}: {time.perf_counter() - t0:.1f} s", flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    text = table(summary)
    (out / "summary.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
