"""HTML of the review station's pages (server-rendered; every value is escaped here).

Pages load only ``/ui/static`` assets (no CDN, no inline script: the Content-Security-Policy
of :mod:`service.ui.routes` forbids both). Data for a page's script rides in a
``<script type="application/json">`` block, which is never executed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any

from model.errors import InvalidClinicalError
from model.text.clinical import parse_clinical
from service.auth import Identity, Role
from workers.jobs import Job, utcnow

N_STAGES = ("0", "1mi", "1", "1a", "1b", "1c", "2", "2a", "2b", "3", "3a", "3b", "3c")
FIELD_VALUES = {
    "n_stage": N_STAGES,
    "side": ("left", "right"),
    "surgery": ("breast_conserving", "total_mastectomy"),
}


@dataclass(frozen=True)
class WorkRow:
    """One line of the worklist: a job (with its order, if any) or an order without a job."""

    created_at: datetime
    job: Job | None
    order_status: str | None = None
    destination: str | None = None
    send_status: str | None = None
    order_id: str | None = None
    held_for_review: bool = False
    patient: str = ""


def _layout(title: str, body: str, identity: Identity | None, csrf: str | None) -> str:
    user = ""
    if identity is not None and csrf is not None:
        user = (
            f'<span class="who">{escape(identity.name)} ({escape(identity.role.value)})</span>'
            '<form method="post" action="/ui/logout" class="logout">'
            f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
            '<button type="submit" data-testid="logout">Log out</button></form>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} · llmctv</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="stylesheet" href="/ui/static/station.css"></head><body>'
        '<header><a class="brand" href="/ui/">llmctv review station</a>'
        '<span class="ai">AI-generated contours: review before use</span>'
        f'<span class="user">{user}</span></header><main>{body}</main></body></html>'
    )


def login_page(error: str | None = None) -> str:
    """The form that takes an API token once (POST, never in the URL)."""
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = (
        '<section class="login"><h1>Log in</h1>'
        "<p>Paste your API token. It is checked once; the browser keeps only a session "
        "cookie. Repeated failures lock the address or the name out for a while.</p>"
        f"{message}"
        '<form method="post" action="/ui/login" autocomplete="off">'
        '<label for="name">Name (optional)</label>'
        '<input id="name" name="name" type="text" maxlength="128" autocomplete="username" '
        'data-testid="login-name">'
        '<label for="token">API token</label>'
        '<input id="token" name="token" type="password" required autofocus '
        'data-testid="login-token">'
        '<button type="submit" data-testid="login-submit">Log in</button>'
        "</form></section>"
    )
    return _layout("Log in", body, None, None)


def not_found_page(what: str, identity: Identity | None, csrf: str | None) -> str:
    """A 404 page (never a stack trace)."""
    body = (
        f'<section class="notfound"><h1>Not found</h1><p>{escape(what)}</p>'
        '<p><a href="/ui/">Back to the worklist</a></p></section>'
    )
    return _layout("Not found", body, identity, csrf)


def age(when: datetime) -> str:
    """``when`` as an age: ``42 s``, ``12 min``, ``3 h``, ``2 d``."""
    seconds = max(0.0, (utcnow() - when).total_seconds())
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def clinical_summary(clinical: dict[str, Any]) -> str:
    """The clinical fields as the template text (one clause per side)."""
    try:
        record = parse_clinical(clinical)
    except InvalidClinicalError:
        return "(unreadable clinical fields)"
    return "; ".join(d.render() for d in sorted(record.diagnoses, key=lambda d: d.side.value))


def _job_cells(job: Job) -> str:
    warnings = "".join(f"<li>{escape(w)}</li>" for w in job.warnings)
    kind = "counterfactual" if job.counterfactual_of else job.source
    return (
        f'<td><a href="/ui/jobs/{escape(job.job_id)}">{escape(job.job_id[:8])}</a>'
        f'<span class="kind">{escape(kind)}</span></td>'
        f'<td><span class="status {escape(job.status.value)}">{escape(job.status.value)}</span>'
        "</td>"
        f'<td><span class="review {escape(job.review.status.value)}">'
        f"{escape(job.review.status.value)}</span></td>"
        f"<td>{escape(clinical_summary(job.clinical))}</td>"
        f'<td><ul class="warnings">{warnings}</ul></td>'
    )


def _row(row: WorkRow) -> str:
    order = ""
    if row.order_id:
        order = f"{escape(row.order_status or '')}"
        if row.destination:
            send = row.send_status or ""
            held = row.job is not None and row.job.review.status.value == "pending"
            if send == "pending" and held and row.held_for_review:
                send = "awaiting approval"
            order += f" → {escape(row.destination)}: {escape(send)}"
    if row.job is not None:
        cells = f"<td>{escape(row.patient)}</td>{_job_cells(row.job)}"
        attrs = f' data-job="{escape(row.job.job_id)}"'
    else:
        cells = (
            f"<td></td><td>order {escape((row.order_id or '')[:8])}</td>"
            '<td><span class="status">—</span></td><td>—</td><td></td><td></td>'
        )
        attrs = ""
    return (
        f'<tr data-testid="job-row"{attrs}>{cells}<td>{order}</td>'
        f"<td>{escape(age(row.created_at))}</td></tr>"
    )


def worklist_page(rows: list[WorkRow], needs_review: bool, identity: Identity, csrf: str) -> str:
    """Jobs and orders, newest first; optionally only the jobs that need review."""
    toggle = (
        '<a href="/ui/" data-testid="filter-all">all</a> · <strong>needs review</strong>'
        if needs_review
        else '<strong>all</strong> · <a href="/ui/?filter=needs-review" '
        'data-testid="filter-needs-review">needs review</a>'
    )
    lines = "".join(_row(r) for r in rows) or (
        '<tr><td colspan="8" class="empty">nothing here</td></tr>'
    )
    body = (
        f'<section><h1>Worklist</h1><p class="filter">Show: {toggle}</p>'
        '<table class="worklist" data-testid="worklist"><thead><tr><th>Patient</th><th>Job</th>'
        "<th>Status</th><th>Review</th><th>Clinical fields</th><th>Warnings</th><th>Order</th>"
        "<th>Age</th>"
        f"</tr></thead><tbody>{lines}</tbody></table></section>"
    )
    return _layout("Worklist", body, identity, csrf)


def _page_data(data: dict[str, Any]) -> str:
    text = json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e")
    return f'<script type="application/json" id="llmctv-page">{text}</script>'


def _clinical_table(clinical: dict[str, Any]) -> str:
    rows = []
    for n, diagnosis in enumerate(clinical.get("diagnoses", [])):
        for key in ("side", "surgery", "t_stage", "n_stage"):
            value = escape(str(diagnosis.get(key)))
            rows.append(f"<tr><th>{escape(key)} [{n}]</th><td>{value}</td></tr>")
    for key in ("age", "pathology", "neoadjuvant_chemotherapy"):
        if clinical.get(key) is not None:
            rows.append(f"<tr><th>{escape(key)}</th><td>{escape(str(clinical[key]))}</td></tr>")
    return f'<table class="clinical">{"".join(rows)}</table>'


def _options(values: tuple[str, ...]) -> str:
    return "".join(f'<option value="{escape(v)}">{escape(v)}</option>' for v in values)


#: Confidence under which a structure is shown as one to check (besides the site's flag).
LOW_CONFIDENCE = 0.8


def _check_first(job: Job) -> str:
    """Needs-attention findings, then each structure's confidence, lowest first."""
    items = "".join(
        f'<li data-testid="attention">{escape(finding)}</li>' for finding in job.attention
    )
    rows = "".join(
        f'<tr class="{"low" if value < LOW_CONFIDENCE else "ok"}" data-testid="confidence">'
        f"<td>{escape(name)}</td><td>{value:.2f}</td></tr>"
        for name, value in sorted(job.structure_confidence.items(), key=lambda kv: kv[1])
    )
    if not items and not rows:
        return ""
    findings = f'<ul class="attention">{items}</ul>' if items else ""
    table = (
        '<table class="confidence"><thead><tr><th>Structure</th><th>confidence</th></tr>'
        f"</thead><tbody>{rows}</tbody></table>"
        if rows
        else ""
    )
    return f'<h2 class="check-first">Check first</h2>{findings}{table}'


def review_page(job: Job, note: str, identity: Identity, csrf: str) -> str:
    """The review page of one job; its script (``review.js``) draws slices and contours."""
    warnings = (
        "".join(f'<li data-testid="warning">{escape(w)}</li>' for w in job.warnings)
        or '<li class="none">no warnings</li>'
    )
    linked = ""
    if job.counterfactual_of:
        original = escape(job.counterfactual_of)
        linked = (
            f'<p class="linked">Counterfactual of <a href="/ui/jobs/{original}">'
            f"{original[:8]}</a></p>"
        )
    data = {
        "job_id": job.job_id,
        "csrf": csrf,
        "status": job.status.value,
        "review": job.review.model_dump(mode="json"),
        "field_values": FIELD_VALUES,
        "may_review": identity.may(Role.REVIEWER),
    }
    viewer = (
        '<section class="viewer"><div class="toolbar">'
        '<span class="group" id="planes">'
        '<button data-plane="axial" class="on">Axial</button>'
        '<button data-plane="coronal">Coronal</button>'
        '<button data-plane="sagittal">Sagittal</button></span>'
        '<span class="group" id="windows">'
        '<button data-window="soft" class="on">Soft tissue</button>'
        '<button data-window="lung">Lung</button>'
        '<button data-window="bone">Bone</button></span>'
        '<span class="index" data-testid="slice-index" id="slice-index">loading…</span>'
        "</div>"
        '<canvas id="slice-view" data-testid="slice-view" tabindex="0" width="512" height="512">'
        "</canvas>"
        '<p class="hint">Wheel or ↑/↓ to scroll, PgUp/PgDn ×10. Solid: this job; dashed: the '
        "counterfactual.</p></section>"
    )
    structures = (
        '<h2>Structures</h2><table class="volumes" id="volumes"><thead><tr><th></th>'
        "<th>Structure</th><th>cc</th><th>counterfactual cc</th><th>Δ cc</th></tr></thead>"
        "<tbody></tbody></table>"
    )
    context = (
        f'<h2>Warnings</h2><ul class="warnings">{warnings}</ul>'
        "<h2>Clinical fields</h2>"
        f"{_clinical_table(job.clinical)}"
        '<h3>Note the model read</h3><pre class="note" data-testid="note">'
        f"{escape(note)}</pre>"
    )
    counterfactual = (
        "<h2>What if the record said…</h2>"
        '<div class="counterfactual"><select id="cf-field" data-testid="counterfactual-field">'
        '<option value="n_stage">N stage</option><option value="side">side</option>'
        '<option value="surgery">surgery</option></select>'
        f'<select id="cf-value" data-testid="counterfactual-value">{_options(N_STAGES)}</select>'
        '<button id="cf-run" data-testid="counterfactual-run">Contour it</button>'
        '<span id="cf-state" data-testid="counterfactual-state"></span></div>'
        '<div id="cf-delta" data-testid="counterfactual-delta"></div>'
    )
    decision = (
        "<h2>Decision</h2>"
        '<p>Review: <strong id="review-status" data-testid="review-status">'
        f"{escape(job.review.status.value)}</strong></p>"
        '<textarea id="reason" data-testid="reason" rows="2" maxlength="1000" '
        'placeholder="reason (needed to reject)"></textarea>'
        '<div class="decide"><button id="approve" class="approve" data-testid="approve">'
        'Approve</button><button id="reject" class="reject" data-testid="reject">Reject'
        '</button></div><p id="decision-error" class="error" role="alert"></p>'
    )
    first = _check_first(job)
    panel = (
        f'<section class="panel">{first}{structures}{context}{counterfactual}{decision}</section>'
    )
    body = (
        f'<div class="jobhead"><h1>Job {escape(job.job_id[:8])}</h1>'
        f'<span class="status {escape(job.status.value)}">{escape(job.status.value)}</span>'
        f"<span>created {escape(age(job.created_at))} ago</span>{linked}"
        '<span class="patient" id="patient" data-testid="patient"></span></div>'
        f'<div class="review-layout">{viewer}{panel}</div>'
        f"{_page_data(data)}"
        '<script src="/ui/static/review.js" defer></script>'
    )
    return _layout(f"Job {job.job_id[:8]}", body, identity, csrf)
