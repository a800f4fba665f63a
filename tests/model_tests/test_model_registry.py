"""Model versions and safe deploy (issue 24, items 4 and 5): ``llmctv models`` over a models
folder, the promoted version served by the workers, the site's ROI names on the output.

Real files throughout: the shipped demo checkpoint copied into a temporary models folder (and
a copy with one weight changed, so the two versions differ in hash), commissioning reports
written by the real report writer, the real audit log, and jobs run by the real demo model
through the embedded worker (:class:`workers.dispatch.EmbeddedDispatcher`, which calls
:func:`workers.pipeline.run_job`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from conftest import REPO
from fake_engine import FakeEngine
from live_server import serve_app

from model.contouring.naming import SideAffix
from model.dataset.structure_map import StructureMap, load_structure_map
from model.errors import (
    CheckpointMismatchError,
    ConfigurationError,
    LlmctvError,
    ModelNotFoundError,
    NoPreviousVersionError,
    PromotionRefusedError,
)
from model.evaluation.commissioning import (
    CTV,
    Acceptance,
    Bootstrap,
    CaseResult,
    StructureResult,
    summarize_commissioning,
)
from model.evaluation.commissioning_report import write_commissioning_report
from model.lab.phantoms.cohort import WrittenCase
from model.registry.model_card import output_names
from model.registry.registry import ModelRegistry
from model.registry.registry_command import register as register_models
from service import api_models
from service.app import create_app
from service.settings import Settings
from workers.audit import AuditKind, AuditLog
from workers.counters import LocalMetrics
from workers.dispatch import EmbeddedDispatcher
from workers.job_events import ObservedJobStore
from workers.jobs import FileJobStore, Job, JobFiles, JobStatus
from workers.model_loading import (
    DEMO_CHECKPOINT,
    model_choice,
    promoted_version,
    registry_audit_sink,
)
from workers.settings import WorkerSettings

SITE_MAP = REPO / "deploy" / "structure-map.example.toml"
STRUCTURES = ["breast", "chest_wall", "axilla", "scf", "imn"]
ADMIN, SUBMITTER = "models-admin-0123456789", "models-submitter-01234"


def short_hash(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:12]


def _result(dice: float) -> StructureResult:
    values = {
        "dice": dice,
        "surface_dice_2mm": dice,
        "surface_dice_3mm": dice,
        "msd_mm": 1.0,
        "hd95_mm": 2.0,
        "apl_mm": 10.0,
    }
    return StructureResult(values, True, True, 1.0, 1.0, 100.0)


def write_report(out: Path, checkpoint_hash: str, imn_dice: float) -> Path:
    """A commissioning report by the real writer: every structure at 0.95, IMN at ``imn_dice``
    (acceptance: surface Dice 3 mm >= 0.9)."""
    structures = [CTV, *STRUCTURES]
    cases = []
    for n in range(5):
        case = CaseResult(f"c{n}", {"surgery": "breast_conserving", "n_stage": "N2"})
        case.models["candidate"] = {
            s: _result(imn_dice if s == "imn" else 0.95) for s in structures
        }
        cases.append(case)
    acceptance = Acceptance(defaults={"surface_dice_3mm": 0.9})
    summary = summarize_commissioning(
        cases, ["candidate"], structures, acceptance, Bootstrap(n_resamples=50)
    )
    write_commissioning_report(
        out,
        summary=summary,
        cases=cases,
        snapshots=[],
        models={
            "candidate": {
                "role": "candidate",
                "path": "-",
                "checkpoint_hash": checkpoint_hash,
                "structures": structures,
            }
        },
        data="site",
        skipped=[],
        generated_at="2026-01-01T00:00:00Z",
        software_version="test",
    )
    return out


def changed_copy(source: Path, target: Path) -> Path:
    """The checkpoint with one bias nudged by 1e-6: another hash, the same contours."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(weights))
    key = sorted(k for k in tensors if k.startswith("net.") and k.endswith("bias"))[0]
    tensors[key] = tensors[key] + 1e-6
    save_file(tensors, str(weights), metadata=metadata)
    return target


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo checkpoint (a copy), a changed copy, and a PASS and an IMN-FAIL report."""
    root = tmp_path_factory.mktemp("checkpoints")
    demo = Path(shutil.copytree(DEMO_CHECKPOINT, root / "demo"))
    changed = changed_copy(DEMO_CHECKPOINT, root / "changed")
    assert short_hash(demo) != short_hash(changed)
    return {
        "demo": demo,
        "changed": changed,
        "demo_pass": write_report(root / "demo-report", short_hash(demo), imn_dice=0.95),
        "changed_fail": write_report(root / "changed-report", short_hash(changed), imn_dice=0.5),
    }


@pytest.fixture(scope="module")
def site_map() -> StructureMap:
    return load_structure_map(SITE_MAP)


def audit_of(storage: Path) -> AuditLog:
    return AuditLog(storage / "audit", 20_000_000, 400.0)


# --- item 5: the site's names ------------------------------------------------------------------
def test_side_forms_are_parsed_and_checked() -> None:
    assert SideAffix.parse("_Lt/_Rt") == SideAffix("_Lt", "_Rt", prefix=False)
    assert SideAffix.parse(" Left/ Right") == SideAffix(" Left", " Right", prefix=False)
    assert SideAffix.parse("Lt_/Rt_") == SideAffix("Lt_", "Rt_", prefix=True)
    assert SideAffix.parse("Lt_/Rt_").template("CTVn_IMN") == "{side}CTVn_IMN"
    for bad in ("L/R", "_L", "_L/_L", "_L/", "_L/R_"):
        with pytest.raises(ConfigurationError):
            SideAffix.parse(bad)


def test_output_names_follow_the_site_map_in_16_characters(site_map: StructureMap) -> None:
    # CTVp_ChestWall_Lt would be 17 characters: the site shortens that one base.
    with pytest.raises(ConfigurationError, match="'CTVp_ChestWall_Lt' exceeds 16"):
        output_names(STRUCTURES, (), "_Lt/_Rt", site_map)
    names = output_names(STRUCTURES, ["chest_wall=CTVp_CW"], "_Lt/_Rt", site_map)
    assert names.rois()["imn"] == ["CTVn_IMN_Lt", "CTVn_IMN_Rt"]
    assert names.rois()["chest_wall"] == ["CTVp_CW_Lt", "CTVp_CW_Rt"]
    # The map's first side form is the default (the example map lists _L/_R first).
    assert output_names(STRUCTURES, (), None, site_map).rois()["breast"] == [
        "CTVp_Breast_L",
        "CTVp_Breast_R",
    ]
    prefix = output_names(STRUCTURES, ["chest_wall=CTVp_CW"], "Lt_/Rt_", site_map)
    assert prefix.rois()["scf"] == ["Lt_CTVn_SCF", "Rt_CTVn_SCF"]
    # " Right" makes the default names too long; the site's short bases fit.
    with pytest.raises(ConfigurationError, match="16 characters"):
        output_names(STRUCTURES, (), " Left/ Right", site_map)
    short = output_names(
        STRUCTURES,
        ["breast=CTV_Breast", "chest_wall=CTVp_CW", "axilla=CTVn_Ax"],
        " Left/ Right",
        site_map,
    )
    assert short.rois()["breast"] == ["CTV_Breast Left", "CTV_Breast Right"]
    assert all(len(n) <= 16 for pair in short.rois().values() for n in pair)
    # A name the site's own map would read as another structure, or without its side.
    with pytest.raises(ConfigurationError, match="reads output name 'CTVn_LN_Axilla_L'"):
        output_names(STRUCTURES, ["imn=CTVn_LN_Axilla"], None, site_map)
    with pytest.raises(ConfigurationError, match="structure map reads"):
        output_names(STRUCTURES, (), "-Lft/-Rgt", site_map)
    with pytest.raises(ConfigurationError, match="no output ROI name for interpectoral"):
        output_names([*STRUCTURES, "interpectoral"], (), None, site_map)
    with pytest.raises(ConfigurationError, match="used twice"):
        output_names(STRUCTURES, ["imn=CTVn_SCF"], None, None)


# --- the registry ------------------------------------------------------------------------------
def test_register_list_promote_refused_override_audited_rollback(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    audit = audit_of(storage)
    registry = ModelRegistry(tmp_path / "models", on_event=registry_audit_sink(audit))
    v1 = registry.register(
        checkpoints["demo"],
        "site-breast",
        who="physicist",
        report=checkpoints["demo_pass"],
        structure_map=SITE_MAP,
    )
    v2 = registry.register(
        checkpoints["changed"],
        "site-breast",
        who="physicist",
        report=checkpoints["changed_fail"] / "report.json",
        roi_names=["chest_wall=CTVp_CW"],
        side_form="_Lt/_Rt",
    )
    assert (v1.version, v2.version) == ("site-breast-v1", "site-breast-v2")
    assert v1.label == f"model site-breast v1 {short_hash(checkpoints['demo'])}"
    assert [c.version for c in registry.versions()] == [v1.version, v2.version]
    # The card: data summary without case names, map, names, encoder, budget, verdicts, as
    # the shipped checkpoint's config records them.
    shipped = json.loads((REPO / "checkpoints" / "demo" / "config.json").read_text())
    assert v1.data["n_cases"] == shipped["n_cases"] and len(v1.data["split_sha256"]) == 64
    assert (
        "A-A0001" not in (tmp_path / "models" / "versions" / v1.version / "card.json").read_text()
    )
    assert v1.structure_map is not None and v1.structure_map["file"] == "structure-map.toml"
    assert v2.structure_map is None  # no map given, none in the checkpoint
    assert v1.text_encoder["identity"] == "smollm2-135m-instruct:c56a7155778496aa"
    budget = (shipped["training"]["epochs"], shipped["training"]["steps_per_epoch"])
    assert (v1.training["epochs"], v1.training["steps_per_epoch"]) == budget == (18, 40)
    assert v1.commissioning is not None and v1.commissioning.verdict == "PASS"
    assert v2.commissioning is not None and v2.commissioning.structures["imn"] == "FAIL"
    assert v2.output_names.rois()["breast"] == ["CTVp_Breast_Lt", "CTVp_Breast_Rt"]
    folder = registry.folder(v1.version)
    assert {p.name for p in folder.iterdir()} == {
        "model.safetensors",
        "config.json",
        "card.json",
        "structure-map.toml",
        "report",
    }
    assert not (folder / "model.safetensors").stat().st_mode & 0o222  # read-only
    card_md = (tmp_path / "models" / "cards" / f"{v1.version}.md").read_text()
    assert "Verdict **PASS**" in card_md and "CTVn_IMN_L" in card_md

    assert registry.promoted().version is None
    assert registry.promote(v1.version, who="physicist") is not None
    with pytest.raises(PromotionRefusedError, match="imn is FAIL"):
        registry.promote(v2.version, who="physicist")
    with pytest.raises(PromotionRefusedError, match="10 to"):
        registry.promote(v2.version, who="physicist", override_reason="because")
    assert registry.promoted().version == v1.version
    event = registry.promote(
        v2.version,
        who="physicist",
        override_reason="IMN is not treated for N1 at this site; FAIL expected, see memo 12",
    )
    assert event is not None and event.replaced == v1.version
    assert registry.promoted().version == v2.version
    assert registry.promoted().previous == (v1.version,)
    promoted = audit.read(kind="model.promoted")
    assert [e["version"] for e in promoted] == [v1.version, v2.version]
    assert "override" not in promoted[0]
    assert promoted[1]["override"] is True and promoted[1]["who"] == "physicist"
    assert promoted[1]["override_reason"].startswith("IMN is not treated")
    assert promoted[1]["model"] == v2.label
    history = registry.history(v2.version)
    assert [h["action"] for h in history] == ["registered", "promoted"]
    assert "memo 12" in (tmp_path / "models" / "cards" / f"{v2.version}.md").read_text()

    back = registry.rollback(who="physicist")
    assert (back.version, back.replaced) == (v1.version, v2.version)
    assert registry.promoted().version == v1.version
    assert audit.read(kind="model.rolled_back")[0]["version"] == v1.version
    with pytest.raises(NoPreviousVersionError):
        registry.rollback(who="physicist")
    pointer = json.loads((tmp_path / "models" / "promoted.json").read_text())
    assert pointer["version"] == v1.version and pointer["previous"] == []
    assert not list((tmp_path / "models").glob(".*.tmp"))


def test_a_report_of_another_checkpoint_is_refused(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    registry = ModelRegistry(tmp_path / "models")
    with pytest.raises(ConfigurationError, match="commission this checkpoint first"):
        registry.register(checkpoints["changed"], "site", who="x", report=checkpoints["demo_pass"])
    assert registry.versions() == []
    assert list((tmp_path / "models" / "versions").iterdir()) == []  # no half-written version


def test_which_checkpoint_is_served_and_a_changed_version_is_refused(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    registry = ModelRegistry(models)
    card = registry.register(checkpoints["demo"], "site", who="x", report=checkpoints["demo_pass"])
    plain = WorkerSettings.from_env(storage_dir=tmp_path)
    assert model_choice(plain).folder == DEMO_CHECKPOINT and promoted_version(plain) is None
    served = WorkerSettings.from_env(storage_dir=tmp_path, models_dir=models)
    with pytest.raises(ModelNotFoundError, match="no model version is promoted"):
        model_choice(served)
    registry.promote(card.version, who="x")
    choice = model_choice(served)
    assert choice.folder == models / "versions" / card.version and choice.card == card
    assert promoted_version(served) == card.version
    explicit = WorkerSettings.from_env(
        storage_dir=tmp_path, models_dir=models, checkpoint=checkpoints["changed"]
    )
    assert model_choice(explicit).folder == checkpoints["changed"]  # the checkpoint wins
    assert model_choice(explicit).card is None and promoted_version(explicit) is None

    config = registry.folder(card.version) / "config.json"
    config.chmod(0o644)
    config.write_text(config.read_text() + " ")
    with pytest.raises(CheckpointMismatchError, match="changed since registration"):
        model_choice(served)
    with pytest.raises(PromotionRefusedError, match="changed since registration"):
        ModelRegistry(models).promote(card.version, who="x", override_reason="x" * 20)


def test_models_command_lines(checkpoints: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    """The sub-commands as ``llmctv`` runs them (its parser and its error exit), with only the
    ``models`` command registered (the full parser imports the training stack: seconds)."""
    audit = audit_of(tmp_path / "storage")
    models = ["--models-dir", str(tmp_path / "models"), "--by", "ada"]

    def run(*argv: str) -> tuple[int, str]:
        parser = argparse.ArgumentParser(prog="llmctv")
        sub = parser.add_subparsers(dest="command", required=True)
        register_models(sub, events=lambda: registry_audit_sink(audit))
        args = parser.parse_args([*argv[:2], *models, *argv[2:]])
        try:
            code = int(args.func(args))
        except LlmctvError as exc:  # as model.cli.main reports it
            print(f"llmctv {args.command}: error [{exc.code}]: {exc.detail}")
            code = 2
        out = capsys.readouterr()
        return code, out.out + out.err

    code, out = run(
        "models",
        "register",
        str(checkpoints["demo"]),
        "--name",
        "site",
        "--structure-map",
        str(SITE_MAP),
        "--side-form",
        "_Lt/_Rt",
        "--roi-name",
        "chest_wall=CTVp_CW",
    )
    assert code == 0 and "registered site-v1" in out and "CTVn_IMN_Lt" in out
    assert "promotion needs an override: no commissioning report" in out
    code, out = run("models", "promote", "site-v1")
    assert code == 2 and "[promotion_refused]" in out
    code, out = run("models", "promote", "site-v1", "--override-reason", "pilot on phantoms only")
    assert code == 0 and "(override, audited)" in out
    code, out = run("models", "list", "--json")
    listed = json.loads(out)
    assert listed["promoted"] == "site-v1" and listed["versions"][0]["promotable"] is False
    code, out = run("models", "rollback")
    assert code == 2 and "[no_previous_version]" in out
    code, out = run("models", "show", "site-v1")
    assert code == 0 and "pilot on phantoms only" in out and "| imn | CTVn_IMN_Lt |" in out
    kinds = [e["kind"] for e in audit.read()]
    assert kinds == ["model.registered", "model.promoted"]
    assert audit.read()[1]["who"] == "ada"


# --- the served version on the job, the RTSTRUCT and the audit trail (real model) -------------
def _wait(store: ObservedJobStore, job_id: str, timeout: float = 300.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if job.status.finished:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def _submit(store: ObservedJobStore, files: JobFiles, job_id: str, case: WrittenCase) -> None:
    files.input_dir(job_id).mkdir(parents=True)
    for path in case.ct_files:
        shutil.copy(path, files.input_dir(job_id) / path.name)
    store.create(Job(job_id=job_id, clinical=case.clinical.model_dump(mode="json")))


def test_the_embedded_worker_serves_the_promoted_version_then_the_rolled_back_one(
    checkpoints: dict[str, Path], phantoms: list[WrittenCase], tmp_path: Path
) -> None:
    storage, models = tmp_path / "storage", tmp_path / "models"
    audit = audit_of(storage)
    registry = ModelRegistry(models, on_event=registry_audit_sink(audit))
    v1 = registry.register(
        checkpoints["demo"],
        "site",
        who="ada",
        report=checkpoints["demo_pass"],
        structure_map=SITE_MAP,
    )
    v2 = registry.register(
        checkpoints["changed"],
        "site",
        who="ada",
        report=checkpoints["changed_fail"],
        structure_map=SITE_MAP,
        roi_names=["chest_wall=CTVp_CW"],
        side_form="_Lt/_Rt",
    )
    registry.promote(v1.version, who="ada")
    registry.promote(v2.version, who="ada", override_reason="site convention: no IMN for N1")
    settings = WorkerSettings.from_env(storage_dir=storage, models_dir=models, device="cpu")
    files = JobFiles(storage)
    store = ObservedJobStore(FileJobStore(files), audit, LocalMetrics(), "embedded-worker")
    worker = EmbeddedDispatcher(settings, store, files)
    worker.start()
    try:
        _submit(store, files, "a1", phantoms[0])
        worker.submit("a1")
        first = _wait(store, "a1")
        assert worker.describe()["model_version"] == v2.label
        registry.rollback(who="ada")
        _submit(store, files, "a2", phantoms[0])
        worker.submit("a2")
        second = _wait(store, "a2")
    finally:
        worker.stop()
    assert first.status is JobStatus.SUCCEEDED, first.error
    assert second.status is JobStatus.SUCCEEDED, second.error
    assert (first.model_version, first.checkpoint) == (v2.label, v2.short_hash)
    assert (second.model_version, second.checkpoint) == (v1.label, v1.short_hash)

    rs1 = pydicom.dcmread(files.rtstruct("a1"))
    rs2 = pydicom.dcmread(files.rtstruct("a2"))
    assert v2.label in list(rs1.SoftwareVersions)
    assert v1.label in list(rs2.SoftwareVersions)
    names1 = [str(r.ROIName) for r in rs1.StructureSetROISequence]
    names2 = [str(r.ROIName) for r in rs2.StructureSetROISequence]
    print("\nv2 ROIs", names1, "\nv1 ROIs", names2)
    side = "L" if phantoms[0].clinical.diagnoses[0].side.letter == "L" else "R"
    assert names1[0] == "CTV" and len(names1) > 1
    assert all(n.endswith(f"_{side}t") and len(n) <= 16 for n in names1[1:])
    assert set(names1[1:]) <= {pair[side == "R"] for pair in v2.output_names.rois().values()}
    v2_to_v1 = {
        new: old
        for s in v2.output_names.rois()
        for new, old in zip(v2.output_names.rois()[s], v1.output_names.rois()[s], strict=True)
    }
    assert [v2_to_v1[n] for n in names1[1:]] == names2[1:]
    assert set(first.structure_confidence) == set(names1[1:])

    finished = audit.read(kind=AuditKind.JOB_FINISHED)
    assert [(e["job_id"], e.get("model_version")) for e in finished] == [
        ("a1", v2.label),
        ("a2", v1.label),
    ]


# --- over HTTP: a live gateway ------------------------------------------------------------------
@pytest.fixture
def gateway_with_models(
    checkpoints: dict[str, Path], tmp_path: Path
) -> Iterator[tuple[str, ModelRegistry]]:
    models = tmp_path / "models"
    registry = ModelRegistry(models)
    registry.register(checkpoints["demo"], "site", who="x", report=checkpoints["demo_pass"])
    registry.register(checkpoints["changed"], "site", who="x")
    settings = Settings.from_env(
        api_tokens=[f"ada:admin:{ADMIN}", f"pacs:submitter:{SUBMITTER}"],
        storage_dir=tmp_path / "storage",
        models_dir=models,
        dicom_listener=False,
        storage_min_free_bytes=1,
    )
    app = create_app(settings, engine=FakeEngine())
    if not any(getattr(r, "path", "") == "/models" for r in app.routes):
        app.include_router(api_models.router)  # until service/app.py includes it
    with serve_app(app) as url:
        yield url, registry


def test_promote_and_rollback_over_http(gateway_with_models: tuple[str, ModelRegistry]) -> None:
    url, registry = gateway_with_models
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=url, timeout=30) as http:
        assert (
            http.get("/models", headers={"Authorization": f"Bearer {SUBMITTER}"}).status_code == 403
        )
        listed = http.get("/models", headers=admin).json()
        assert listed["configured"] and listed["promoted"] is None
        assert [v["version"] for v in listed["versions"]] == ["site-v1", "site-v2"]
        assert listed["versions"][1]["promotion_problems"] == ["no commissioning report"]

        unknown = http.post("/models/site-v9/promote", headers=admin)
        assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_model_version")
        assert http.post("/models/site-v1/promote", headers=admin).json()["changed"] is True
        refused = http.post("/models/site-v2/promote", headers=admin)
        assert (refused.status_code, refused.json()["code"]) == (409, "promotion_refused")
        forced = http.post(
            "/models/site-v2/promote",
            headers=admin,
            json={"override_reason": "trial of the site's IMN convention"},
        )
        assert forced.status_code == 200, forced.text
        assert forced.json()["override"] is True and forced.json()["replaced"] == "site-v1"
        assert registry.promoted().version == "site-v2"

        back = http.post("/models/rollback", headers=admin)
        assert back.status_code == 200 and back.json()["version"] == "site-v1"
        again = http.post("/models/rollback", headers=admin)
        assert (again.status_code, again.json()["code"]) == (409, "no_previous_version")
        assert http.get("/models", headers=admin).json()["promoted"] == "site-v1"

        audit = http.get("/audit", headers=admin, params={"kind": "model.promoted"}).json()
        promoted = audit["entries"]
        assert [e["version"] for e in promoted] == ["site-v1", "site-v2"]
        assert promoted[1]["who"] == "ada" and promoted[1]["override"] is True
        rolled = http.get("/audit", headers=admin, params={"kind": "model.rolled_back"}).json()
        assert rolled["entries"][0]["who"] == "ada"
