"""Submitters see and cancel only their own jobs; reviewers and admins see all (issue 23).

On e766665 a submitter saw every patient in the worklist and could cancel any job. Here two
submitters (bob, dave), a reviewer (alice) and an admin (ada) share one live gateway: another
submitter's job is 404 ``job_not_found`` on every endpoint, with the same body as a job that
does not exist (its existence is not told), and absent from the list and the worklist.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pydicom
import pytest
from gateway_client import TOKEN, submit, wait_finished
from live_server import serve_app
from review_helpers import NoteEngine, bearer

from model.lab.phantoms.cohort import WrittenCase
from service.app import create_app
from service.settings import Settings
from workers.jobs import Job, JobStatus, new_job_id

BOB, DAVE = bearer("bob-token-0123456789abcdef"), bearer("dave-token-0123456789abcdef")
ALICE, ADA = bearer("alice-token-0123456789abcd"), bearer("ada-token-0123456789abcdef0")
TOKENS = [
    "bob:submitter:bob-token-0123456789abcdef",
    "dave:submitter:dave-token-0123456789abcdef",
    "alice:reviewer:alice-token-0123456789abcd",
    "ada:admin:ada-token-0123456789abcdef0",
    f"poller:reviewer:{TOKEN}",  # gateway_client.wait_finished
]
HTML = {"Accept": "text/html"}
N1_LEFT = {
    "diagnoses": [{"side": "left", "surgery": "breast_conserving", "t_stage": "2", "n_stage": "1"}]
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    settings = Settings.from_env(
        api_tokens=TOKENS,
        storage_dir=tmp_path_factory.mktemp("own-jobs"),
        dicom_listener=False,
        storage_min_free_bytes=1,
    )
    app = create_app(settings, engine=NoteEngine())
    with serve_app(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def bobs_job(gateway: tuple[str, Any], phantoms: list[WrittenCase]) -> dict[str, Any]:
    url, _ = gateway
    answer = submit(url, list(phantoms[0].ct_files), json.dumps(N1_LEFT), headers=BOB)
    assert answer.status_code == 202, answer.text
    job = wait_finished(url, answer.json()["job_id"])
    assert job["status"] == "succeeded", job
    return job


def _without_id(body: dict[str, Any], job_id: str) -> dict[str, Any]:
    return {k: str(v).replace(job_id, "ID") for k, v in body.items()}


def _login(url: str, headers: dict[str, str]) -> httpx.Client:
    token = headers["Authorization"].removeprefix("Bearer ")
    client = httpx.Client(base_url=url, timeout=30)
    assert client.post("/ui/login", data={"token": token}).status_code == 303
    return client


def test_a_job_records_its_submitter(bobs_job: dict[str, Any]) -> None:
    assert bobs_job["submitted_by"] == "bob"


def test_another_submitters_job_is_not_found_like_an_unknown_one(
    gateway: tuple[str, Any], bobs_job: dict[str, Any]
) -> None:
    url, _ = gateway
    job_id, unknown = bobs_job["job_id"], new_job_id()
    answers: dict[str, int] = {}
    for method, tail in (
        ("GET", ""),
        ("GET", "/rtstruct"),
        ("GET", "/preview.png"),
        ("DELETE", ""),
    ):
        theirs = httpx.request(method, f"{url}/jobs/{job_id}{tail}", headers=DAVE)
        nobodys = httpx.request(method, f"{url}/jobs/{unknown}{tail}", headers=DAVE)
        answers[f"{method} /jobs/{{id}}{tail}"] = theirs.status_code
        assert theirs.status_code == nobodys.status_code == 404, (method, tail)
        assert theirs.json()["code"] == "job_not_found"
        assert _without_id(theirs.json(), job_id) == _without_id(nobodys.json(), unknown)
    counterfactual = httpx.post(
        f"{url}/jobs/{job_id}/counterfactual",
        json={"field": "n_stage", "value": "0"},
        headers=DAVE,
    )
    assert counterfactual.status_code == 404 and counterfactual.json()["code"] == "job_not_found"
    for who in (BOB, ALICE, ADA):
        assert httpx.get(f"{url}/jobs/{job_id}", headers=who).status_code == 200
        rtstruct = httpx.get(f"{url}/jobs/{job_id}/rtstruct", headers=who)
        assert rtstruct.status_code == 200 and rtstruct.content[128:132] == b"DICM"
        assert httpx.get(f"{url}/jobs/{job_id}/preview.png", headers=who).status_code == 200
    print("\nanother submitter's job:", answers)


def test_the_job_list_holds_the_callers_own_jobs(
    gateway: tuple[str, Any], bobs_job: dict[str, Any]
) -> None:
    url, app = gateway
    system = Job(job_id=new_job_id(), status=JobStatus.SUCCEEDED, clinical=N1_LEFT)
    app.state.llmctv.store.create(system)  # an order's job: no submitter (the system)
    listed = {
        name: {j["job_id"] for j in httpx.get(f"{url}/jobs", headers=who).json()["jobs"]}
        for name, who in (("bob", BOB), ("dave", DAVE), ("alice", ALICE), ("ada", ADA))
    }
    assert bobs_job["job_id"] in listed["bob"] and system.job_id not in listed["bob"]
    assert bobs_job["job_id"] not in listed["dave"] and system.job_id not in listed["dave"]
    for name in ("alice", "ada"):
        assert {bobs_job["job_id"], system.job_id} <= listed[name]
    assert httpx.get(f"{url}/jobs/{system.job_id}", headers=BOB).status_code == 404
    succeeded = httpx.get(f"{url}/jobs?status=succeeded&limit=1", headers=ALICE).json()["jobs"]
    assert len(succeeded) == 1 and succeeded[0]["status"] == "succeeded"
    assert httpx.get(f"{url}/jobs?limit=0", headers=ALICE).status_code == 422


def test_only_the_submitter_cancels_and_the_cancel_names_them(gateway: tuple[str, Any]) -> None:
    url, app = gateway
    queued = Job(job_id=new_job_id(), clinical=N1_LEFT, submitted_by="bob")
    app.state.llmctv.store.create(queued)
    refused = httpx.delete(f"{url}/jobs/{queued.job_id}", headers=DAVE)
    assert refused.status_code == 404 and refused.json()["code"] == "job_not_found"
    assert app.state.llmctv.store.get(queued.job_id).status is JobStatus.QUEUED
    done = httpx.delete(f"{url}/jobs/{queued.job_id}", headers=BOB)
    assert done.status_code == 200 and done.json()["status"] == "cancelled"
    assert done.json()["error"]["detail"] == "the job was cancelled by bob"
    life = app.state.llmctv_audit.read(job_id=queued.job_id)
    assert [(e["kind"], e["who"]) for e in life if e["kind"] != "job.submitted"] == [
        ("job.cancelled", "bob")
    ]


def test_the_worklist_and_pages_of_a_submitter_hold_its_own_jobs(
    gateway: tuple[str, Any], bobs_job: dict[str, Any], phantoms: list[WrittenCase]
) -> None:
    url, _ = gateway
    job_id = bobs_job["job_id"]
    patient = str(pydicom.dcmread(phantoms[0].ct_files[0], stop_before_pixels=True).PatientName)
    patient = patient.replace("^", " ").strip()
    dave = _login(url, DAVE)
    worklist = dave.get("/ui/", headers=HTML)
    assert worklist.status_code == 200
    assert f'data-job="{job_id}"' not in worklist.text and patient not in worklist.text
    page = dave.get(f"/ui/jobs/{job_id}", headers=HTML)
    assert page.status_code == 404 and "no such job" in page.text.lower()
    assert patient not in page.text
    for tail in ("state.json", "view.json", "slices/axial/0.png", "contours/axial/0.json"):
        answer = dave.get(f"/ui/jobs/{job_id}/{tail}")
        assert answer.status_code == 404 and answer.json()["code"] == "job_not_found", tail
    for who in (BOB, ALICE):
        client = _login(url, who)
        theirs = client.get("/ui/", headers=HTML).text
        assert f'data-job="{job_id}"' in theirs and patient in theirs
        assert client.get(f"/ui/jobs/{job_id}/view.json").status_code == 200


def test_a_reviewers_counterfactual_is_the_reviewers(
    gateway: tuple[str, Any], bobs_job: dict[str, Any]
) -> None:
    url, _ = gateway
    answer = httpx.post(
        f"{url}/jobs/{bobs_job['job_id']}/counterfactual",
        json={"field": "n_stage", "value": "0"},
        headers=ALICE,
    )
    assert answer.status_code == 202, answer.text
    twin = answer.json()["job_id"]
    assert httpx.get(f"{url}/jobs/{twin}", headers=ALICE).json()["submitted_by"] == "alice"
    assert httpx.get(f"{url}/jobs/{twin}", headers=BOB).status_code == 404
    mine = httpx.post(
        f"{url}/jobs/{bobs_job['job_id']}/counterfactual",
        json={"field": "side", "value": "right"},
        headers=BOB,
    )
    assert mine.status_code == 202
    assert httpx.get(f"{url}/jobs/{mine.json()['job_id']}", headers=BOB).status_code == 200


def test_an_order_and_its_job_belong_to_whoever_placed_it(gateway: tuple[str, Any]) -> None:
    """Before, any submitter read every order and its job's state; order jobs had no owner."""
    url, app = gateway
    body = {"study_instance_uid": "1.2.826.0.1.7788", "clinical": N1_LEFT}
    created = httpx.post(f"{url}/orders", json=body, headers=BOB)
    assert created.status_code == 201, created.text
    order_id = created.json()["order_id"]
    assert httpx.get(f"{url}/orders/{order_id}", headers=BOB).status_code == 200
    assert httpx.get(f"{url}/orders/{order_id}", headers=ALICE).status_code == 200
    theirs = httpx.get(f"{url}/orders/{order_id}", headers=DAVE)
    unknown = httpx.get(f"{url}/orders/{'0' * 32}", headers=DAVE)
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["code"] == unknown.json()["code"] == "order_not_found"
    assert httpx.post(f"{url}/orders/{order_id}/send", headers=DAVE).status_code == 404
    desk = app.state.llmctv_orders
    assert desk.orders.get(order_id).created_by == "bob"
