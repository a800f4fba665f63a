// The review page: CT slices (server-rendered PNGs) with every structure of the job's RTSTRUCT
// drawn over them, a counterfactual overlay, and the decision. Plain JavaScript, no library.
// Contours arrive as polygons in display pixels of the slice's PNG (service/ui/structures.py).
// Timing (window.llmctvTiming): ms from navigation start to the first drawn slice, and from
// each slice-change event to its drawn slice.
"use strict";

(function () {
  const page = JSON.parse(document.getElementById("llmctv-page").textContent);
  const timing = { firstSliceMs: null, viewMs: null, changes: [] };
  window.llmctvTiming = timing;
  const canvas = document.getElementById("slice-view");
  const ctx = canvas.getContext("2d");
  const indexLabel = document.getElementById("slice-index");
  const PREFETCH = 3;
  const images = new Map();
  const contours = new Map();
  const state = {
    plane: "axial",
    window: "soft",
    index: { axial: 0, coronal: 0, sagittal: 0 },
    view: null,
    hidden: new Set(),
    other: null, // {job_id, view} of the counterfactual shown dashed
    drawn: 0,
  };

  function headers() {
    return { "Content-Type": "application/json", "X-CSRF-Token": page.csrf };
  }

  async function getJson(url) {
    const answer = await fetch(url, { credentials: "same-origin" });
    if (answer.status === 401) {
      window.location.assign("/ui/login");
      throw new Error("logged out");
    }
    if (!answer.ok) {
      const problem = await answer.json().catch(() => ({ detail: answer.statusText }));
      throw new Error(problem.detail || answer.statusText);
    }
    return answer.json();
  }

  function imageUrl(plane, index, win) {
    return `/ui/jobs/${page.job_id}/slices/${plane}/${index}.png?window=${win}`;
  }

  function loadImage(plane, index) {
    const key = `${plane}/${index}/${state.window}`;
    if (!images.has(key)) {
      const promise = new Promise((resolve, reject) => {
        const img = new Image();
        img.onload = () => resolve(img);
        img.onerror = () => reject(new Error("slice not available"));
        img.src = imageUrl(plane, index, state.window);
      });
      images.set(key, promise);
      if (images.size > 400) images.delete(images.keys().next().value);
    }
    return images.get(key);
  }

  function loadContours(jobId, plane, index) {
    const key = `${jobId}/${plane}/${index}`;
    if (!contours.has(key)) {
      contours.set(key, getJson(`/ui/jobs/${jobId}/contours/${plane}/${index}.json`));
      if (contours.size > 800) contours.delete(contours.keys().next().value);
    }
    return contours.get(key);
  }

  function colourOf(view, number) {
    const roi = view.rois.find((r) => r.number === number);
    return roi ? `rgb(${roi.color.join(",")})` : "rgb(255,255,255)";
  }

  function nameOf(view, number) {
    const roi = view.rois.find((r) => r.number === number);
    return roi ? roi.name : String(number);
  }

  function volumeOf(view, number) {
    return (view.volumes_cc || {})[nameOf(view, number)] || 0;
  }

  function strokePaths(entries, view, scale, dashed) {
    // Largest structure first and widest (the union CTV), sub-volumes over it, so each shows.
    const ordered = [...entries].sort((a, b) => volumeOf(view, b.roi) - volumeOf(view, a.roi));
    const largest = ordered.length ? volumeOf(view, ordered[0].roi) : 0;
    ctx.setLineDash(dashed ? [6, 4] : []);
    for (const entry of ordered) {
      if (state.hidden.has(nameOf(view, entry.roi))) continue;
      ctx.lineWidth = volumeOf(view, entry.roi) === largest && ordered.length > 1 ? 4 : 2;
      ctx.strokeStyle = colourOf(view, entry.roi);
      for (const path of entry.paths) {
        ctx.beginPath();
        ctx.moveTo(path[0] * scale.x, path[1] * scale.y);
        for (let n = 2; n < path.length; n += 2) ctx.lineTo(path[n] * scale.x, path[n + 1] * scale.y);
        ctx.closePath();
        ctx.stroke();
      }
    }
    ctx.setLineDash([]);
  }

  async function draw(started) {
    const plane = state.plane;
    const index = state.index[plane];
    const ticket = ++state.drawn;
    const wanted = [loadImage(plane, index), loadContours(page.job_id, plane, index)];
    if (state.other) wanted.push(loadContours(state.other.job_id, plane, index));
    const [img, own, other] = await Promise.all(wanted);
    if (ticket !== state.drawn) return; // a newer slice was asked for meanwhile
    const info = state.view.planes[plane];
    const width = img.naturalWidth;
    const height = Math.round(img.naturalHeight * info.aspect);
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(img, 0, 0, width, height);
    const scale = { x: width / img.naturalWidth, y: height / img.naturalHeight };
    strokePaths(own, state.view, scale, false);
    if (other) strokePaths(other, state.other.view, scale, true);
    indexLabel.textContent = `${plane} ${index + 1} / ${info.count}`;
    indexLabel.dataset.plane = plane;
    indexLabel.dataset.index = String(index);
    const now = performance.now();
    if (timing.firstSliceMs === null) timing.firstSliceMs = now;
    else if (started !== undefined) timing.changes.push(now - started);
    canvas.dataset.drawn = `${plane}/${index}/${state.window}`;
    prefetch(plane, index);
  }

  function prefetch(plane, index) {
    const count = state.view.planes[plane].count;
    for (let d = 1; d <= PREFETCH; d++) {
      for (const n of [index + d, index - d]) {
        if (n < 0 || n >= count) continue;
        loadImage(plane, n).catch(() => {});
        loadContours(page.job_id, plane, n).catch(() => {});
        if (state.other) loadContours(state.other.job_id, plane, n).catch(() => {});
      }
    }
  }

  function step(delta) {
    const count = state.view.planes[state.plane].count;
    const next = Math.min(count - 1, Math.max(0, state.index[state.plane] + delta));
    if (next === state.index[state.plane]) return;
    state.index[state.plane] = next;
    draw(performance.now()).catch(showError);
  }

  function showError(error) {
    indexLabel.textContent = `error: ${error.message}`;
  }

  function onButtons(groupId, attribute, apply) {
    const group = document.getElementById(groupId);
    group.addEventListener("click", (event) => {
      const button = event.target.closest("button");
      if (!button) return;
      for (const b of group.querySelectorAll("button")) b.classList.toggle("on", b === button);
      apply(button.dataset[attribute]);
      draw(performance.now()).catch(showError);
      canvas.focus();
    });
  }

  // --- structures and volumes ---------------------------------------------------------------
  function volumeRows() {
    const tbody = document.querySelector("#volumes tbody");
    tbody.textContent = "";
    const own = state.view.volumes_cc || {};
    const other = state.other ? state.other.view.volumes_cc || {} : null;
    const names = [...new Set([...state.view.rois.map((r) => r.name), ...Object.keys(own)])];
    if (other) for (const name of Object.keys(other)) if (!names.includes(name)) names.push(name);
    for (const name of names) {
      const roi = state.view.rois.find((r) => r.name === name);
      const row = document.createElement("tr");
      const toggleCell = document.createElement("td");
      if (roi) {
        const toggle = document.createElement("input");
        toggle.type = "checkbox";
        toggle.checked = !state.hidden.has(name);
        toggle.dataset.testid = "structure-toggle";
        toggle.setAttribute("data-testid", "structure-toggle");
        toggle.dataset.roi = name;
        toggle.addEventListener("change", () => {
          if (toggle.checked) state.hidden.delete(name);
          else state.hidden.add(name);
          draw().catch(showError);
        });
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = `rgb(${roi.color.join(",")})`;
        toggleCell.append(toggle, swatch);
      }
      const cells = [name, fmt(own[name]), other ? fmt(other[name]) : "", ""];
      if (other) {
        const delta = (other[name] || 0) - (own[name] || 0);
        cells[3] = (delta > 0 ? "+" : "") + delta.toFixed(1);
      }
      row.append(toggleCell);
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      tbody.append(row);
    }
  }

  function fmt(value) {
    return value === undefined ? "—" : Number(value).toFixed(1);
  }

  function deltaTable() {
    const box = document.getElementById("cf-delta");
    box.textContent = "";
    if (!state.other) return;
    const own = state.view.volumes_cc || {};
    const other = state.other.view.volumes_cc || {};
    const table = document.createElement("table");
    table.className = "delta";
    const head = document.createElement("tr");
    for (const text of ["Structure", "this job cc", "counterfactual cc", "Δ cc"]) {
      const th = document.createElement("th");
      th.textContent = text;
      head.append(th);
    }
    table.append(head);
    const names = [...new Set([...Object.keys(own), ...Object.keys(other)])];
    for (const name of names) {
      const delta = (other[name] || 0) - (own[name] || 0);
      const row = document.createElement("tr");
      row.dataset.roi = name;
      row.dataset.delta = delta.toFixed(2);
      row.className = delta < 0 ? "less" : delta > 0 ? "more" : "same";
      for (const text of [name, fmt(own[name]), fmt(other[name]), (delta > 0 ? "+" : "") + delta.toFixed(1)]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      table.append(row);
    }
    const caption = document.createElement("p");
    caption.className = "caption";
    caption.textContent = `Counterfactual job ${state.other.job_id.slice(0, 8)}: ${state.other.label}`;
    box.append(caption, table);
  }

  // --- counterfactual -----------------------------------------------------------------------
  const cfField = document.getElementById("cf-field");
  const cfValue = document.getElementById("cf-value");
  const cfState = document.getElementById("cf-state");

  function fillValues() {
    cfValue.textContent = "";
    for (const value of page.field_values[cfField.value]) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = value;
      cfValue.append(option);
    }
  }

  async function showCounterfactual(jobId, label) {
    const view = await getJson(`/ui/jobs/${jobId}/view.json`);
    state.other = { job_id: jobId, view, label };
    volumeRows();
    deltaTable();
    await draw();
  }

  async function waitFor(jobId) {
    for (;;) {
      const job = await getJson(`/ui/jobs/${jobId}/state.json`);
      cfState.textContent = `${job.status} ${Math.round(job.progress * 100)}%`;
      if (job.status === "succeeded") return job;
      if (job.status === "failed" || job.status === "cancelled") {
        throw new Error(job.error ? job.error.detail : job.status);
      }
      await new Promise((resolve) => setTimeout(resolve, 400));
    }
  }

  async function runCounterfactual() {
    const body = { field: cfField.value, value: cfValue.value };
    cfState.textContent = "queued";
    cfState.dataset.state = "running";
    const answer = await fetch(`/ui/jobs/${page.job_id}/counterfactual`, {
      method: "POST",
      headers: headers(),
      credentials: "same-origin",
      body: JSON.stringify(body),
    });
    const reply = await answer.json();
    if (!answer.ok) throw new Error(reply.detail || answer.statusText);
    await waitFor(reply.job_id);
    await showCounterfactual(reply.job_id, `${body.field} = ${body.value}`);
    cfState.textContent = "done";
    cfState.dataset.state = "done";
  }

  // --- decision -----------------------------------------------------------------------------
  const reviewStatus = document.getElementById("review-status");
  const decisionError = document.getElementById("decision-error");
  const approve = document.getElementById("approve");
  const reject = document.getElementById("reject");

  function showReview(review) {
    let text = review.status;
    if (review.by) text += ` by ${review.by}`;
    if (review.at) text += ` at ${new Date(review.at).toLocaleString()}`;
    if (review.reason) text += ` — ${review.reason}`;
    reviewStatus.textContent = text;
    reviewStatus.dataset.status = review.status;
    const decided = review.status !== "pending";
    approve.disabled = decided || !page.may_review || page.status !== "succeeded";
    reject.disabled = approve.disabled;
    document.getElementById("reason").disabled = approve.disabled;
  }

  async function decide(decision) {
    decisionError.textContent = "";
    const reason = document.getElementById("reason").value.trim() || null;
    const answer = await fetch(`/ui/jobs/${page.job_id}/review`, {
      method: "POST",
      headers: headers(),
      credentials: "same-origin",
      body: JSON.stringify({ decision, reason }),
    });
    const reply = await answer.json();
    if (!answer.ok) {
      decisionError.textContent = reply.detail || answer.statusText;
      return;
    }
    showReview(reply.review);
  }

  function showPatient(header) {
    // Right-patient check: name, ID, birth date, study date and series of the CT shown.
    const box = document.getElementById("patient");
    const name = (header.PatientName || "").replaceAll("^", " ").trim() || "(no name)";
    const parts = [name, `ID ${header.PatientID || "?"}`];
    if (header.PatientBirthDate) parts.push(`born ${dicomDate(header.PatientBirthDate)}`);
    if (header.PatientSex) parts.push(header.PatientSex);
    if (header.StudyDate) parts.push(`CT of ${dicomDate(header.StudyDate)}`);
    if (header.SeriesDescription) parts.push(header.SeriesDescription);
    box.textContent = parts.join(" · ");
  }

  function dicomDate(text) {
    return /^\d{8}$/.test(text) ? `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6)}` : text;
  }

  // --- start --------------------------------------------------------------------------------
  async function start() {
    showReview(page.review);
    cfField.addEventListener("change", fillValues);
    fillValues();
    document.getElementById("cf-run").addEventListener("click", () =>
      runCounterfactual().catch((error) => {
        cfState.textContent = `error: ${error.message}`;
        cfState.dataset.state = "error";
      })
    );
    approve.addEventListener("click", () => decide("approved"));
    reject.addEventListener("click", () => decide("rejected"));
    if (page.status !== "succeeded") {
      indexLabel.textContent = `the job is ${page.status}: nothing to show yet`;
      return;
    }
    state.view = await getJson(`/ui/jobs/${page.job_id}/view.json`);
    timing.viewMs = performance.now();
    showPatient(state.view.patient);
    Object.assign(state.index, state.view.start);
    volumeRows();
    await draw();
    canvas.addEventListener(
      "wheel",
      (event) => {
        event.preventDefault();
        step(event.deltaY > 0 ? 1 : -1);
      },
      { passive: false }
    );
    canvas.addEventListener("keydown", (event) => {
      const steps = { ArrowUp: -1, ArrowDown: 1, ArrowLeft: -1, ArrowRight: 1, PageUp: -10, PageDown: 10 };
      if (event.key in steps) {
        event.preventDefault();
        step(steps[event.key]);
      }
    });
    onButtons("planes", "plane", (plane) => (state.plane = plane));
    onButtons("windows", "window", (win) => (state.window = win));
    canvas.focus();
    const existing = state.view.counterfactuals;
    if (existing.length) {
      const last = existing[existing.length - 1];
      await waitFor(last).then(() => showCounterfactual(last, "earlier counterfactual"));
    }
  }

  start().catch(showError);
})();
