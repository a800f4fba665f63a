"""Review decisions, counterfactual jobs, the review gate and the pages' security (no browser).

A live gateway on a small phantom CT with :class:`review_helpers.NoteEngine` (a contour that
follows the note's N stage), so every job finishes in well under a second.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicom_tools import dciodvfy_errors, needs_dciodvfy
from gateway_client import submit, wait_finished
from live_server import free_port, serve_app
from review_helpers import REVIEWER_TOKEN, SUBMITTER_TOKEN, TOKENS, NoteEngine, bearer

from model.lab.phantoms.cohort import WrittenCase
from service.app import create_app
from service.order_desk import OrderDesk
from service.orders import Order, OrderStatus, SendState, SendStatus
from service.settings import Settings
from workers.jobs import Job, JobStatus, new_job_id, utcnow
from workers.review import Review, ReviewRequiredError, ReviewStatus

REVIEWER = bearer(REVIEWER_TOKEN)
SUBMITTER = bearer(SUBMITTER_TOKEN)
N1_LEFT = {
    "diagnoses": [{"side": "left", "surgery": "breast_conserving", "t_stage": "2", "n_stage": "1"}]
}


@pytest.fixture(scope="module")
def review_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    settings = Settings.from_env(
        api_tokens=TOKENS,
        storage_dir=tmp_path_factory.mktemp("review"),
        dicom_listener=False,
        require_review=True,
        dicom_destinations=[f"TPS=PLANNING@127.0.0.1:{free_port()}"],
        dicom_send_retries=0,
    )
    app = create_app(settings, engine=NoteEngine())
    with serve_app(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def finished(review_gateway: tuple[str, Any], phantoms: list[WrittenCase]) -> dict[str, Any]:
    """One succeeded N1 job (module-wide; tests that decide on it make their own)."""
    url, _ = review_gateway
    return _finished_job(url, phantoms[0])


def _finished_job(
    url: str, case: WrittenCase, clinical: dict[str, Any] = N1_LEFT
) -> dict[str, Any]:
    answer = submit(url, list(case.ct_files), json.dumps(clinical), headers=SUBMITTER)
    assert answer.status_code == 202, answer.text
    job = wait_finished(url, answer.json()["job_id"])
    assert job["status"] == "succeeded", job
    return job


def _review(url: str, job_id: str, body: dict[str, Any], who: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{url}/jobs/{job_id}/review", json=body, headers=who, timeout=30)


# --- review decisions ---------------------------------------------------------------------------
def test_a_new_job_is_pending_and_its_rtstruct_unapproved(
    review_gateway: tuple[str, Any], finished: dict[str, Any]
) -> None:
    url, _ = review_gateway
    assert finished["review"] == {
        "status": "pending",
        "by": None,
        "at": None,
        "reason": None,
        "unapproved_sop_instance_uid": None,
    }
    rtstruct = httpx.get(f"{url}/jobs/{finished['job_id']}/rtstruct", headers=SUBMITTER)
    ds = pydicom.dcmread(_bytes_file(rtstruct.content))
    assert ds.ApprovalStatus == "UNAPPROVED"


def _bytes_file(content: bytes) -> Any:
    import io

    return io.BytesIO(content)


def test_approval_by_a_reviewer_writes_an_approved_new_instance(
    review_gateway: tuple[str, Any], phantoms: list[WrittenCase], tmp_path: Path
) -> None:
    url, _ = review_gateway
    job = _finished_job(url, phantoms[0])
    job_id = job["job_id"]
    refused = _review(url, job_id, {"decision": "approved", "reason": None}, SUBMITTER)
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    answer = _review(url, job_id, {"decision": "approved", "reason": None}, REVIEWER)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "succeeded"
    assert body["review"]["status"] == "approved" and body["review"]["by"] == "alice"
    assert body["review"]["at"] is not None
    assert body["review"]["unapproved_sop_instance_uid"] == job["rtstruct_sop_instance_uid"]
    assert body["rtstruct_sop_instance_uid"] != job["rtstruct_sop_instance_uid"]
    again = _review(url, job_id, {"decision": "rejected", "reason": "changed my mind"}, REVIEWER)
    assert again.status_code == 409 and again.json()["code"] == "already_reviewed"
    status = httpx.get(f"{url}/jobs/{job_id}", headers=SUBMITTER).json()
    assert status["review"]["status"] == "approved"
    rtstruct = httpx.get(f"{url}/jobs/{job_id}/rtstruct", headers=SUBMITTER).content
    ds = pydicom.dcmread(_bytes_file(rtstruct))
    assert ds.ApprovalStatus == "APPROVED"
    assert str(ds.ReviewerName) == "alice"
    assert len(ds.ReviewDate) == 8 and len(ds.ReviewTime) == 6
    assert ds.SOPInstanceUID == body["rtstruct_sop_instance_uid"]
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert len(ds.ROIContourSequence) >= 1
    (tmp_path / "approved.dcm").write_bytes(rtstruct)
    _, app = review_gateway
    (entry,) = app.state.llmctv_audit.read(kind="review.decision", job_id=job_id)
    assert entry["who"] == "alice" and entry["decision"] == "approved"


@needs_dciodvfy
def test_the_approved_rtstruct_is_clean_under_dciodvfy(
    review_gateway: tuple[str, Any], phantoms: list[WrittenCase], tmp_path: Path
) -> None:
    url, _ = review_gateway
    job = _finished_job(url, phantoms[1])
    answer = _review(url, job["job_id"], {"decision": "approved", "reason": "fine"}, REVIEWER)
    assert answer.status_code == 200, answer.text
    path = tmp_path / "approved.dcm"
    path.write_bytes(httpx.get(f"{url}/jobs/{job['job_id']}/rtstruct", headers=REVIEWER).content)
    assert dciodvfy_errors(path) == []


def test_rejection_needs_a_reason_and_is_final(
    review_gateway: tuple[str, Any], phantoms: list[WrittenCase]
) -> None:
    url, _ = review_gateway
    job_id = _finished_job(url, phantoms[0])["job_id"]
    bare = _review(url, job_id, {"decision": "rejected", "reason": " "}, REVIEWER)
    assert bare.status_code == 422 and bare.json()["code"] == "invalid_review"
    assert "reason" in bare.json()["detail"]
    bad = _review(url, job_id, {"decision": "maybe", "reason": None}, REVIEWER)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "decision"
    answer = _review(url, job_id, {"decision": "rejected", "reason": "misses IMN"}, REVIEWER)
    assert answer.status_code == 200, answer.text
    assert answer.json()["review"]["status"] == "rejected"
    assert answer.json()["review"]["reason"] == "misses IMN"
    again = _review(url, job_id, {"decision": "approved", "reason": None}, REVIEWER)
    assert again.status_code == 409 and again.json()["code"] == "already_reviewed"


def test_the_review_gate_travels_with_the_rtstruct(
    review_gateway: tuple[str, Any], phantoms: list[WrittenCase]
) -> None:
    """On e766665 a submitter downloaded a rejected RTSTRUCT (200) and nothing said so."""
    url, _ = review_gateway
    job_id = _finished_job(url, phantoms[0])["job_id"]
    path = f"{url}/jobs/{job_id}/rtstruct"
    pending = httpx.get(path, headers=SUBMITTER, timeout=30)
    assert pending.status_code == 200 and pending.headers["x-llmctv-review"] == "pending"
    original = pydicom.dcmread(io.BytesIO(pending.content))
    assert original.ApprovalStatus == "UNAPPROVED"
    _review(url, job_id, {"decision": "rejected", "reason": "wrong side"}, REVIEWER)
    refused = httpx.get(path, headers=SUBMITTER, timeout=30)
    assert refused.status_code == 409 and refused.json()["code"] == "structure_set_rejected"
    marked = httpx.get(path, headers=REVIEWER, timeout=30)
    assert marked.status_code == 200 and marked.headers["x-llmctv-review"] == "rejected"
    ds = pydicom.dcmread(io.BytesIO(marked.content))
    assert ds.ApprovalStatus == "REJECTED" and ds.ReviewerName == "alice"
    assert ds.SOPInstanceUID != original.SOPInstanceUID, "a new instance, never a changed one"


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED])
def test_no_decision_before_success(review_gateway: tuple[str, Any], status: JobStatus) -> None:
    url, app = review_gateway
    job_id = new_job_id()
    app.state.llmctv.store.create(Job(job_id=job_id, status=status, clinical=N1_LEFT))
    answer = _review(url, job_id, {"decision": "approved", "reason": None}, REVIEWER)
    assert answer.status_code == 409 and answer.json()["code"] == "job_not_finished"
    unknown = _review(url, "ab" * 16, {"decision": "approved", "reason": None}, REVIEWER)
    assert unknown.status_code == 404


# --- counterfactuals ----------------------------------------------------------------------------
def test_counterfactual_n0_of_an_n1_job_is_linked_and_smaller(
    review_gateway: tuple[str, Any], finished: dict[str, Any]
) -> None:
    url, app = review_gateway
    answer = httpx.post(
        f"{url}/jobs/{finished['job_id']}/counterfactual",
        json={"field": "n_stage", "value": "0"},
        headers=SUBMITTER,
    )
    assert answer.status_code == 202, answer.text
    twin = wait_finished(url, answer.json()["job_id"])
    assert twin["status"] == "succeeded"
    assert twin["counterfactual_of"] == finished["job_id"]
    record = app.state.llmctv.store.get(twin["job_id"])
    assert record.clinical["diagnoses"][0]["n_stage"] == "0"
    assert record.clinical["diagnoses"][0]["side"] == "left"
    assert record.source == "counterfactual"
    assert twin["roi_volumes_cc"]["CTV"] < finished["roi_volumes_cc"]["CTV"]
    original_inputs = sorted(
        p.name for p in app.state.llmctv.files.input_dir(finished["job_id"]).rglob("*.dcm")
    )
    twin_inputs = sorted(
        p.name for p in app.state.llmctv.files.input_dir(twin["job_id"]).rglob("*.dcm")
    )
    assert twin_inputs == original_inputs


@pytest.mark.parametrize(
    ("body", "code", "names"),
    [
        ({"field": "t_stage", "value": "3"}, "invalid_counterfactual", "field"),
        ({"field": "n_stage", "value": "7"}, "invalid_clinical", "n_stage"),
        ({"field": "side", "value": "middle"}, "invalid_clinical", "side"),
        ({"field": "n_stage", "value": "1"}, "invalid_counterfactual", "value"),
        ({"field": "n_stage"}, "invalid_request", "value"),
    ],
    ids=["unchangeable-field", "bad-n-stage", "bad-side", "no-change", "no-value"],
)
def test_invalid_counterfactuals_are_422_naming_the_field(
    review_gateway: tuple[str, Any],
    finished: dict[str, Any],
    body: dict[str, str],
    code: str,
    names: str,
) -> None:
    url, _ = review_gateway
    answer = httpx.post(
        f"{url}/jobs/{finished['job_id']}/counterfactual", json=body, headers=SUBMITTER
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == code
    assert names in answer.json()["detail"]


# --- the gate to the TPS ------------------------------------------------------------------------
def _order_for(desk: OrderDesk, job_id: str) -> Order:
    order = Order(
        order_id=job_id,
        study_instance_uid="1.2.3",
        clinical=N1_LEFT,
        destination="TPS",
        status=OrderStatus.MATCHED,
        job_id=job_id,
        expires_at=utcnow() + timedelta(hours=1),
        send=SendState(status=SendStatus.PENDING),
    )
    desk.orders.create(order)
    return order


def _desk_job(app: Any, review: Review) -> tuple[OrderDesk, str]:
    desk: OrderDesk = app.state.llmctv_orders
    job_id = new_job_id()
    app.state.llmctv.store.create(
        Job(job_id=job_id, status=JobStatus.SUCCEEDED, clinical=N1_LEFT, review=review)
    )
    _order_for(desk, job_id)
    return desk, job_id


def test_with_require_review_a_pending_job_is_not_sent(review_gateway: tuple[str, Any]) -> None:
    url, app = review_gateway
    desk, order_id = _desk_job(app, Review())
    desk.run_once()
    assert desk.orders.get(order_id).send.status is SendStatus.PENDING
    with pytest.raises(ReviewRequiredError):
        desk.require_approval(desk.orders.get(order_id))
    answer = httpx.post(f"{url}/orders/{order_id}/send", headers=SUBMITTER)
    assert answer.status_code == 409 and answer.json()["code"] == "review_required"


def test_a_rejected_job_is_never_sent(review_gateway: tuple[str, Any]) -> None:
    url, app = review_gateway
    desk, order_id = _desk_job(app, Review(status=ReviewStatus.REJECTED, by="alice"))
    desk.run_once()
    send = desk.orders.get(order_id).send
    assert send.status is SendStatus.FAILED and "rejected" in (send.reason or "")
    answer = httpx.post(f"{url}/orders/{order_id}/send", headers=SUBMITTER)
    assert answer.status_code == 409 and answer.json()["code"] == "review_required"


def test_an_approved_job_goes_out(review_gateway: tuple[str, Any]) -> None:
    _, app = review_gateway
    desk, order_id = _desk_job(app, Review(status=ReviewStatus.APPROVED, by="alice"))
    desk.require_approval(desk.orders.get(order_id))  # no error
    desk.run_once()
    deadline = time.monotonic() + 20
    while desk.orders.get(order_id).send.status is SendStatus.PENDING:
        assert time.monotonic() < deadline, "an approved job's RTSTRUCT was never sent"
        time.sleep(0.1)
    # The destination is a closed port: the attempt itself fails, but it was made.
    assert desk.orders.get(order_id).send.status in (SendStatus.SENDING, SendStatus.FAILED)


def test_without_require_review_nothing_waits(tmp_path: Path) -> None:
    from workers.jobs import FileJobStore, JobFiles

    settings = Settings.from_env(storage_dir=tmp_path, dicom_listener=False)
    assert settings.review.require_review is False
    files = JobFiles(tmp_path)
    from service.orders import OrderStore

    desk = OrderDesk(settings, OrderStore(tmp_path), FileJobStore(files), files, _Idle())
    desk.store.create(Job(job_id="ab01", status=JobStatus.SUCCEEDED, clinical=N1_LEFT))
    order = _order_for(desk, "ab01")
    desk.require_approval(order)  # no error: the gate is off
    assert desk._review_allows(order, desk.store.get("ab01"))


def test_a_job_that_needs_attention_waits_for_approval_even_without_review(
    tmp_path: Path,
) -> None:
    """A needs-attention finding holds the RTSTRUCT back from automatic sending (issue 22)."""
    from service.orders import OrderStore
    from workers.jobs import FileJobStore, JobFiles

    settings = Settings.from_env(storage_dir=tmp_path, dicom_listener=False)
    assert settings.review.require_review is False and settings.review.hold_needs_attention is True
    files = JobFiles(tmp_path)
    desk = OrderDesk(settings, OrderStore(tmp_path), FileJobStore(files), files, _Idle())
    finding = "the note requires a breast CTV on the left side, but none was found"
    desk.store.create(
        Job(job_id="ab02", status=JobStatus.SUCCEEDED, clinical=N1_LEFT, attention=[finding])
    )
    order = _order_for(desk, "ab02")
    assert not desk._review_allows(order, desk.store.get("ab02"))
    with pytest.raises(ReviewRequiredError):
        desk.require_approval(order)
    desk.store.update("ab02", review=Review(status=ReviewStatus.APPROVED, by="alice"))
    assert desk._review_allows(order, desk.store.get("ab02"))
    relaxed = OrderDesk(
        Settings.from_env(storage_dir=tmp_path, dicom_listener=False, hold_needs_attention=False),
        desk.orders,
        desk.store,
        files,
        _Idle(),
    )
    desk.store.update("ab02", review=Review())
    assert relaxed._review_allows(order, desk.store.get("ab02"))


def test_retention_keeps_jobs_still_needed_and_a_missing_job_fails_only_its_order(
    tmp_path: Path,
) -> None:
    """On e766665 retention deleted a job pending review, then every desk round failed with
    job_not_found and a new order stayed waiting (issue 23)."""
    from service.orders import OrderStore
    from service.retention import RetentionHolds, purge_expired
    from workers.jobs import FileJobStore, JobFiles

    settings = Settings.from_env(storage_dir=tmp_path, dicom_listener=False, require_review=True)
    files = JobFiles(tmp_path)
    desk = OrderDesk(settings, OrderStore(tmp_path), FileJobStore(files), files, _Idle())
    old = utcnow() - timedelta(hours=500)
    approved = Review(status=ReviewStatus.APPROVED, by="alice")
    jobs = {
        "ee01": Job(job_id="ee01", status=JobStatus.SUCCEEDED, created_at=old),  # pending review
        "ee02": Job(job_id="ee02", status=JobStatus.SUCCEEDED, created_at=old, review=approved),
        "ee03": Job(job_id="ee03", status=JobStatus.SUCCEEDED, created_at=old, review=approved),
    }
    for job in jobs.values():
        desk.store.create(job)
    _order_for(desk, "ee03")  # approved, its send still pending: a live order
    review = settings.review
    holds = RetentionHolds(desk.orders, review.require_review, review.hold_needs_attention)
    assert purge_expired(desk.store, files, 168, holds.hold()) == 1
    assert set(desk.store.job_ids()) == {"ee01", "ee03"}, "pending review and live order kept"

    _order_for(desk, "ee09")  # an order whose job is gone (deleted by hand, lost storage)
    waiting = Order(
        order_id="ee10",
        study_instance_uid="9.9.9",
        clinical=N1_LEFT,
        destination="TPS",
        expires_at=utcnow() - timedelta(seconds=1),
    )
    desk.orders.create(waiting)
    desk.run_once()
    broken = desk.orders.get("ee09")
    assert broken.send.status is SendStatus.FAILED and "job_not_found" in (broken.send.reason or "")
    assert desk.orders.get("ee10").status is OrderStatus.EXPIRED, "the other orders went on"


class _Idle:
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def describe(self) -> dict[str, object]:
        return {}

    def submit(self, job_id: str) -> None: ...


# --- the pages' security ------------------------------------------------------------------------
HTML = {"Accept": "text/html"}


def _login(url: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30)
    answer = client.post("/ui/login", data={"token": token})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/"
    return client


def test_pages_need_a_session_or_a_bearer_token(
    review_gateway: tuple[str, Any], finished: dict[str, Any]
) -> None:
    url, _ = review_gateway
    job_id = finished["job_id"]
    for path in ("/ui/", f"/ui/jobs/{job_id}"):
        answer = httpx.get(url + path, headers=HTML)
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
    for path in (
        f"/ui/jobs/{job_id}/slices/axial/0.png",
        f"/ui/jobs/{job_id}/contours/axial/0.json",
        f"/ui/jobs/{job_id}/view.json",
    ):
        assert httpx.get(url + path).status_code == 401, path
        assert httpx.get(url + path, headers=SUBMITTER).status_code == 200, path
    assert httpx.get(f"{url}/ui/login").status_code == 200


def test_login_sets_a_strict_httponly_cookie_and_never_echoes_the_token(
    review_gateway: tuple[str, Any],
) -> None:
    url, _ = review_gateway
    wrong = httpx.post(f"{url}/ui/login", data={"token": "not-a-token"})
    assert wrong.status_code == 401 and "not accepted" in wrong.text
    answer = httpx.post(f"{url}/ui/login", data={"token": REVIEWER_TOKEN})
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"].lower()
    for part in ("httponly", "samesite=strict", "max-age=", "expires=", "path=/ui"):
        assert part in cookie, cookie
    assert REVIEWER_TOKEN.lower() not in cookie
    assert REVIEWER_TOKEN not in answer.headers["location"]
    page = httpx.get(f"{url}/ui/", cookies=answer.cookies, headers=HTML)
    assert page.status_code == 200 and 'data-testid="worklist"' in page.text
    assert REVIEWER_TOKEN not in page.text


def test_page_posts_need_the_csrf_token_and_logout_ends_the_session(
    review_gateway: tuple[str, Any], phantoms: list[WrittenCase]
) -> None:
    url, _ = review_gateway
    job_id = _finished_job(url, phantoms[0])["job_id"]
    client = _login(url, REVIEWER_TOKEN)
    page = client.get(f"/ui/jobs/{job_id}", headers=HTML)
    assert page.status_code == 200
    csrf = json.loads(page.text.split('id="llmctv-page">')[1].split("</script>")[0])["csrf"]
    body = {"decision": "approved", "reason": None}
    forged = client.post(f"/ui/jobs/{job_id}/review", json=body)
    assert forged.status_code == 403 and forged.json()["code"] == "csrf_failed"
    decided = client.post(f"/ui/jobs/{job_id}/review", json=body, headers={"X-CSRF-Token": csrf})
    assert decided.status_code == 200 and decided.json()["review"]["by"] == "alice"
    assert client.post("/ui/logout", data={"csrf": "wrong"}).status_code == 403
    out = client.post("/ui/logout", data={"csrf": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    again = client.get("/ui/", headers=HTML)
    assert again.status_code == 303 and again.headers["location"] == "/ui/login"


def test_an_expired_session_goes_back_to_login(review_gateway: tuple[str, Any]) -> None:
    url, app = review_gateway
    client = _login(url, SUBMITTER_TOKEN)
    assert client.get("/ui/", headers=HTML).status_code == 200
    sessions = app.state.llmctv_ui.sessions
    sessions.expire(client.cookies["llmctv_session"], utcnow() - timedelta(seconds=1))
    answer = client.get("/ui/", headers=HTML)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"


def test_unknown_job_is_a_404_page_without_a_stack_trace(review_gateway: tuple[str, Any]) -> None:
    url, _ = review_gateway
    client = _login(url, SUBMITTER_TOKEN)
    for job_id in ("0123abcd" * 4, "not-a-job", "..%2F..%2Fetc"):
        answer = client.get(f"/ui/jobs/{job_id}", headers=HTML)
        assert answer.status_code == 404
        assert "Traceback" not in answer.text
    page = client.get(f"/ui/jobs/{'0123abcd' * 4}", headers=HTML)
    assert "text/html" in page.headers["content-type"] and "no such job" in page.text.lower()


def test_a_submitter_may_not_decide_from_the_page(
    review_gateway: tuple[str, Any], finished: dict[str, Any]
) -> None:
    url, _ = review_gateway
    client = _login(url, SUBMITTER_TOKEN)
    page = client.get(f"/ui/jobs/{finished['job_id']}", headers=HTML)
    csrf = json.loads(page.text.split('id="llmctv-page">')[1].split("</script>")[0])["csrf"]
    answer = client.post(
        f"/ui/jobs/{finished['job_id']}/review",
        json={"decision": "approved", "reason": None},
        headers={"X-CSRF-Token": csrf},
    )
    assert answer.status_code == 403 and answer.json()["code"] == "forbidden"


def test_slices_and_contours_line_up(
    review_gateway: tuple[str, Any], finished: dict[str, Any]
) -> None:
    url, _ = review_gateway
    job_id = finished["job_id"]
    view = httpx.get(f"{url}/ui/jobs/{job_id}/view.json", headers=SUBMITTER).json()
    assert next(r["name"] for r in view["rois"]) == "CTV"
    k = view["start"]["axial"]
    polygons = httpx.get(
        f"{url}/ui/jobs/{job_id}/contours/axial/{k}.json", headers=SUBMITTER
    ).json()
    assert polygons and polygons[0]["paths"]
    width = view["planes"]["axial"]["size"][0]
    xs = [v for entry in polygons for path in entry["paths"] for v in path[0::2]]
    assert min(xs) >= 0 and max(xs) <= width
    assert max(xs) > width / 2  # a left-sided target: patient left is image right
    png = httpx.get(f"{url}/ui/jobs/{job_id}/slices/axial/{k}.png?window=lung", headers=SUBMITTER)
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert (
        httpx.get(f"{url}/ui/jobs/{job_id}/slices/axial/9999.png", headers=SUBMITTER).status_code
        == 422
    )
    coronal = httpx.get(
        f"{url}/ui/jobs/{job_id}/contours/coronal/{view['start']['coronal']}.json",
        headers=SUBMITTER,
    ).json()
    assert coronal and coronal[0]["paths"]


def test_the_page_puts_what_needs_attention_first(review_gateway: tuple[str, Any]) -> None:
    """Needs-attention findings and the least confident structures lead the review panel."""
    url, app = review_gateway
    job_id = new_job_id()
    finding = "the note requires the breast CTV on the left side, but none was found"
    app.state.llmctv.store.create(
        Job(
            job_id=job_id,
            status=JobStatus.FAILED,
            clinical=N1_LEFT,
            attention=[finding],
            structure_confidence={"CTVn_SCF_L": 0.41, "CTVp_Breast_L": 0.93},
        )
    )
    page = _login(url, REVIEWER_TOKEN).get(f"/ui/jobs/{job_id}", headers=HTML).text
    assert page.index("Check first") < page.index("<h2>Structures</h2>")
    assert f'<li data-testid="attention">{finding}</li>' in page
    assert page.index("CTVn_SCF_L") < page.index("CTVp_Breast_L"), "least confident first"
    assert '<tr class="low" data-testid="confidence"><td>CTVn_SCF_L</td>' in page


def test_the_page_of_an_unfinished_or_failed_job_explains_itself(
    review_gateway: tuple[str, Any],
) -> None:
    url, app = review_gateway
    job_id = new_job_id()
    app.state.llmctv.store.create(
        Job(job_id=job_id, status=JobStatus.FAILED, clinical=N1_LEFT, submitted_by="bob")
    )
    client = _login(url, REVIEWER_TOKEN)
    page = client.get(f"/ui/jobs/{job_id}", headers=HTML)
    assert page.status_code == 200 and '"status": "failed"' in page.text
    assert "N1, cT2, breast conserving surgery, left side" in page.text  # the note
    assert client.get(f"/ui/jobs/{job_id}/view.json").status_code == 409
    twin = httpx.post(
        f"{url}/jobs/{job_id}/counterfactual",
        json={"field": "n_stage", "value": "0"},
        headers=SUBMITTER,
    )
    assert twin.status_code == 409 and twin.json()["code"] == "job_not_finished"


def test_the_worklist_filters_jobs_that_need_review(
    review_gateway: tuple[str, Any], finished: dict[str, Any]
) -> None:
    url, app = review_gateway
    decided = new_job_id()
    app.state.llmctv.store.create(
        Job(
            job_id=decided,
            status=JobStatus.SUCCEEDED,
            clinical=N1_LEFT,
            review=Review(status=ReviewStatus.APPROVED, by="alice"),
            submitted_by="bob",
        )
    )
    client = _login(url, SUBMITTER_TOKEN)
    everything = client.get("/ui/", headers=HTML).text
    pending = client.get("/ui/?filter=needs-review", headers=HTML).text
    assert f'data-job="{decided}"' in everything
    assert f'data-job="{decided}"' not in pending
    assert f'data-job="{finished["job_id"]}"' in pending


def _same_series_uid_as(case: WrittenCase, series_uid: str, out: Path) -> list[Path]:
    """``case``'s CT (another patient) stored again under ``series_uid``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for path in case.ct_files:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.save_as(out / path.name, enforce_file_format=True)
        paths.append(out / path.name)
    return paths


def test_two_patients_sharing_a_series_uid_each_see_their_own_ct(
    review_gateway: tuple[str, Any], phantoms: list[WrittenCase], tmp_path: Path
) -> None:
    """On e766665 the CT cache was keyed by SeriesInstanceUID: B's page showed A's CT."""
    url, _ = review_gateway
    first, second = phantoms[0], phantoms[1]
    job_a = _finished_job(url, first)
    view_a = httpx.get(f"{url}/ui/jobs/{job_a['job_id']}/view.json", headers=SUBMITTER).json()
    uid = str(pydicom.dcmread(first.ct_files[0]).SeriesInstanceUID)
    files_b = _same_series_uid_as(second, uid, tmp_path / "b")
    answer = submit(url, files_b, json.dumps(N1_LEFT), headers=SUBMITTER)
    job_b = wait_finished(url, answer.json()["job_id"])
    view_b = httpx.get(f"{url}/ui/jobs/{job_b['job_id']}/view.json", headers=SUBMITTER).json()
    name_b = str(pydicom.dcmread(second.ct_files[0]).PatientName)
    assert view_a["patient"]["PatientName"] != name_b
    assert view_b["patient"]["PatientName"] == name_b, view_b["patient"]
    k = view_b["start"]["axial"]
    slices = [
        httpx.get(f"{url}/ui/jobs/{j}/slices/axial/{k}.png", headers=SUBMITTER).content
        for j in (job_a["job_id"], job_b["job_id"])
    ]
    assert slices[0] != slices[1], "B's slice is B's pixels"


def test_who_did_it_is_audited(
    review_gateway: tuple[str, Any], phantoms: list[WrittenCase]
) -> None:
    """On e766665 a cancel was audited as the worker, a page counterfactual as
    ``counterfactual``, and logins not at all (issue 23)."""
    url, app = review_gateway
    audit = app.state.llmctv_audit
    form = httpx.get(f"{url}/ui/login", timeout=30)
    assert form.status_code == 200 and 'data-testid="login-token"' in form.text
    refused = httpx.post(f"{url}/ui/login", data={"token": "not-a-token-0123456789"})
    assert refused.status_code == 401
    client = _login(url, REVIEWER_TOKEN)
    job = _finished_job(url, phantoms[0])
    page = client.get(f"/ui/jobs/{job['job_id']}", headers=HTML).text
    csrf = page.split('"csrf": "', 1)[1].split('"', 1)[0]
    twin = client.post(
        f"/ui/jobs/{job['job_id']}/counterfactual",
        json={"field": "n_stage", "value": "0"},
        headers={"X-CSRF-Token": csrf},
    )
    assert twin.status_code == 202, twin.text
    queued = Job(job_id=new_job_id(), clinical=N1_LEFT, submitted_by="bob")
    app.state.llmctv.store.create(queued)
    cancel = httpx.delete(f"{url}/jobs/{queued.job_id}", headers=SUBMITTER, timeout=30)
    assert cancel.status_code == 200, cancel.text
    assert client.post("/ui/logout", data={"csrf": csrf}).status_code == 303
    entries = audit.read()
    submitted = [e for e in entries if e.get("job_id") == twin.json()["job_id"]]
    assert submitted[0]["kind"] == "job.submitted" and submitted[0]["who"] == "alice"
    ended = [
        e for e in entries if e.get("job_id") == queued.job_id and e["kind"] != "job.submitted"
    ]
    assert ended and ended[-1]["who"] == "bob", ended
    kinds = [(e["kind"], e["who"]) for e in entries if e["kind"].startswith("ui.")]
    assert ("ui.login_failed", "unknown") in kinds
    assert ("ui.login", "alice") in kinds and ("ui.logout", "alice") in kinds
    assert not any("not-a-token" in str(e) for e in entries), "no secret in the trail"
