// The emosent page: upload (XMLHttpRequest, for upload progress), poll the job, then the player
// with the timeline and the table. Plain JS, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 500;
let info = { max_upload_mb: Infinity, token_required: false, speech_recognition: true, colours: { emotion: {}, sentiment: {} } };
let current = null; // { id, result, name }
let videoUrl = null;

function headers() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
  $("submit").disabled = false;
}

function detailOf(status, body) {
  let detail = body;
  try { detail = JSON.parse(body).detail || body; } catch (e) { /* not JSON: show it as it is */ }
  if (typeof detail !== "string") detail = JSON.stringify(detail);
  if (status === 401) $("token-row").hidden = false;
  return `${status}: ${detail}`;
}

const mb = (bytes) => (bytes / 1e6).toFixed(1);
const pct = (x) => `${Math.round(100 * x)}%`;

async function loadInfo() {
  try {
    info = await (await fetch("/v1/info")).json();
  } catch (e) {
    return showError("the server does not answer: reload the page when it is up");
  }
  $("token-row").hidden = !info.token_required;
  $("token").value = sessionStorage.getItem("emosent-token") || "";
  if (!info.speech_recognition) {
    $("hint").textContent = "This server has no speech recognition: add subtitles or a transcript.";
  }
}

function submit(event) {
  event.preventDefault();
  const video = $("video").files[0];
  const subtitles = $("subtitles").files[0];
  $("error").hidden = true;
  if (!video) return showError("choose a video first");
  if (video.size > info.max_upload_mb * 1e6) {
    return showError(`${video.name} is ${mb(video.size)} MB; this server accepts at most ${info.max_upload_mb} MB`);
  }
  sessionStorage.setItem("emosent-token", $("token").value.trim());
  const form = new FormData();
  form.append("video", video);
  if (subtitles) form.append(subtitles.name.toLowerCase().endsWith(".json") ? "transcript" : "subtitles", subtitles);

  $("submit").disabled = true;
  $("result").hidden = true;
  $("progress").hidden = false;
  $("upload-progress").value = 0;
  $("analysis-progress").value = 0;
  $("upload-text").textContent = "";
  $("analysis-text").textContent = "";

  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/analyses");
  for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = (e) => {
    if (!e.lengthComputable) return;
    $("upload-progress").value = e.loaded / e.total;
    $("upload-text").textContent = `${mb(e.loaded)} of ${mb(e.total)} MB`;
  };
  xhr.onload = () => {
    if (xhr.status !== 202) {
      const wait = xhr.getResponseHeader("Retry-After");
      return showError(detailOf(xhr.status, xhr.responseText) + (wait ? ` (retry in ${wait} s)` : ""));
    }
    $("upload-progress").value = 1;
    $("upload-text").textContent = "sent";
    const job = JSON.parse(xhr.responseText);
    // The player reads the file from this computer: the server deletes its copy when the job ends.
    if (videoUrl) URL.revokeObjectURL(videoUrl);
    videoUrl = URL.createObjectURL(video);
    current = { id: job.id, result: null, name: video.name };
    poll(job.id);
  };
  xhr.onerror = () => showError("the upload failed: the connection closed (is the server up, and the file within its limit?)");
  xhr.send(form);
}

async function poll(id) {
  if (!current || current.id !== id) return; // another upload has started since
  let response;
  try {
    response = await fetch(`/v1/analyses/${id}`, { headers: headers() });
  } catch (e) {
    return showError("lost the server while waiting for the analysis; reload the page when it is up");
  }
  const text = await response.text();
  if (!response.ok) return showError(detailOf(response.status, text));
  const job = JSON.parse(text);
  const { done, total } = job.progress;
  if (job.status === "queued") {
    $("analysis-text").textContent = "waiting in the queue";
  } else if (job.status === "running") {
    $("analysis-progress").value = total ? done / total : 0;
    $("analysis-text").textContent = total ? `${done} of ${total} utterances` : "reading the video";
  } else if (job.status === "failed") {
    return showError(`the analysis failed: ${job.error}`);
  } else if (job.status === "done") {
    $("analysis-progress").value = 1;
    $("analysis-text").textContent = `done in ${job.result.elapsed_s.toFixed(1)} s`;
    current.result = job.result;
    $("submit").disabled = false;
    return render(job.result);
  }
  setTimeout(() => poll(id), POLL_MS);
}

function render(result) {
  const duration = Math.max(result.duration_s, 1e-3);
  const player = $("player");
  player.src = videoUrl;
  $("result").hidden = false;

  for (const [track, key, colours] of [["emotion-track", "emotions", info.colours.emotion],
                                       ["sentiment-track", "sentiments", info.colours.sentiment]]) {
    const el = $(track);
    el.replaceChildren();
    result.utterances.forEach((u, i) => {
      const top = u[key][0];
      const seg = document.createElement("button");
      seg.type = "button";
      seg.className = "seg";
      seg.dataset.index = i;
      seg.dataset.speaker = speakerKey(u.speaker);
      seg.style.left = pct(u.start_time / duration);
      seg.style.width = `${(100 * (u.end_time - u.start_time)) / duration}%`;
      // as in the PNG timeline: opacity follows the confidence (of the colour only: the label stays legible)
      seg.style.background = withAlpha(colours[top.label] || "#999999", 0.35 + 0.65 * top.confidence);
      seg.textContent = top.label;
      const who = u.speaker == null ? "" : `${u.speaker} · `;
      seg.title = `${who}${u.start_time.toFixed(2)}–${u.end_time.toFixed(2)} s · ${top.label} ${pct(top.confidence)} · “${u.text}”`;
      seg.addEventListener("click", () => seek(i));
      el.appendChild(seg);
    });
  }

  const legend = [];
  for (const [title, colours] of [["emotion", info.colours.emotion], ["sentiment", info.colours.sentiment]]) {
    const head = document.createElement("strong");
    head.textContent = `${title}:`;
    legend.push(head);
    for (const [label, colour] of Object.entries(colours)) {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = colour;
      item.append(swatch, label);
      legend.push(item);
    }
  }
  $("legend").replaceChildren(...legend);

  const rows = result.utterances.map((u, i) => {
    const tr = document.createElement("tr");
    tr.dataset.index = i;
    tr.dataset.speaker = speakerKey(u.speaker);
    const who = cell(speakerName(u.speaker));
    who.className = "speaker-col";
    tr.append(cell(String(i + 1)), cell(`${u.start_time.toFixed(2)}–${u.end_time.toFixed(2)}`), who, cell(u.text),
              topCell(u.emotions, info.colours.emotion), topCell(u.sentiments, info.colours.sentiment));
    tr.addEventListener("click", () => seek(i));
    return tr;
  });
  $("utterances").tBodies[0].replaceChildren(...rows);
  // with no speaker known the column would be all dashes and the filter one choice: both hidden
  const named = result.utterances.some((u) => u.speaker != null);
  $("utterances").classList.toggle("no-speakers", !named);
  renderSpeakers(result.speakers || [], named);

  const notes = [...result.warnings.map((w) => `warning: ${w}`),
                 ...result.skipped.map((s) => `skipped ${s.start_time.toFixed(2)}–${s.end_time.toFixed(2)} s: ${s.reason}`)];
  $("notes").replaceChildren(...notes.map((n) => { const li = document.createElement("li"); li.textContent = n; return li; }));

  const link = $("download");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([JSON.stringify(result, null, 2)], { type: "application/json" }));
  link.download = `${current.name.replace(/\.[^.]*$/, "")}.emosent.json`;
}

// A speaker as a data attribute and a filter value ("null" for the utterances without one).
const speakerKey = (speaker) => JSON.stringify(speaker);
const speakerName = (speaker) => (speaker == null ? "(unknown)" : speaker);
const signed = (x) => (x > 0 ? "+" : x < 0 ? "−" : "") + Math.abs(x).toFixed(2);

function renderSpeakers(speakers, named) {
  const rows = speakers.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.speaker = speakerKey(s.speaker);
    const m = s.sentiment_movement;
    const moved = m ? `${m.trend}: ${signed(m.first_third)} → ${signed(m.last_third)}` : "—";
    tr.append(cell(named ? speakerName(s.speaker) : "everyone"), cell(String(s.utterances)),
              cell(`${s.spoken_s.toFixed(1)} s (${pct(s.spoken_share)})`),
              sharesCell(s.emotions, info.colours.emotion), sharesCell(s.sentiments, info.colours.sentiment), cell(moved));
    return tr;
  });
  $("speakers").tBodies[0].replaceChildren(...rows);
  $("speakers-section").hidden = !speakers.length;

  const filter = $("speaker-filter");
  const all = new Option("all speakers", "");
  filter.replaceChildren(all, ...speakers.map((s) => new Option(speakerName(s.speaker), speakerKey(s.speaker))));
  filter.value = "";
  $("filter-row").hidden = !named;
  applyFilter();
}

function sharesCell(shares, colours) {
  // a bar of the shares (the speaker's utterances by top label), and the labels that occur, commonest first
  const td = document.createElement("td");
  const bar = document.createElement("div");
  bar.className = "sharebar";
  const present = Object.entries(shares).filter(([, share]) => share > 0).sort((a, b) => b[1] - a[1]);
  for (const [label, share] of present) {
    const part = document.createElement("span");
    part.style.width = pct(share);
    part.style.background = colours[label] || "#999";
    part.title = `${label} ${pct(share)}`;
    bar.appendChild(part);
  }
  const text = document.createElement("span");
  text.className = "others";
  text.textContent = present.map(([label, share]) => `${label} ${pct(share)}`).join(", ");
  td.append(bar, text);
  return td;
}

function applyFilter() {
  // the table keeps the chosen speaker's utterances; the timeline dims the others' (their times stay in view)
  const chosen = $("speaker-filter").value;
  for (const tr of $("utterances").tBodies[0].rows) tr.hidden = chosen !== "" && tr.dataset.speaker !== chosen;
  for (const seg of document.querySelectorAll(".seg")) seg.classList.toggle("dimmed", chosen !== "" && seg.dataset.speaker !== chosen);
}

function withAlpha(hex, alpha) {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return `rgba(${r}, ${g}, ${b}, ${alpha.toFixed(3)})`;
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function topCell(top, colours) {
  const td = document.createElement("td");
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.style.background = colours[top[0].label] || "#999";
  const main = document.createElement("strong");
  main.textContent = `${top[0].label} ${pct(top[0].confidence)}`;
  const others = document.createElement("span");
  others.className = "others";
  others.textContent = top.slice(1).map((t) => `${t.label} ${pct(t.confidence)}`).join(", ");
  td.append(swatch, main, others);
  return td;
}

function seek(i) {
  const u = current.result.utterances[i];
  $("player").currentTime = u.start_time;
  mark(i);
}

function mark(i) {
  for (const el of document.querySelectorAll(".seg, #utterances tbody tr")) {
    el.classList.toggle("current", Number(el.dataset.index) === i);
  }
}

function follow() {
  if (!current || !current.result) return;
  const t = $("player").currentTime;
  $("playhead").style.left = pct(Math.min(t / Math.max(current.result.duration_s, 1e-3), 1));
  const i = current.result.utterances.findIndex((u) => u.start_time <= t && t < u.end_time);
  if (i >= 0) mark(i);
}

async function remove() {
  if (!current) return;
  const response = await fetch(`/v1/analyses/${current.id}`, { method: "DELETE", headers: headers() });
  if (response.status !== 204 && response.status !== 404) return showError(detailOf(response.status, await response.text()));
  $("result").hidden = true;
  $("progress").hidden = true;
  current = null;
}

$("form").addEventListener("submit", submit);
$("delete").addEventListener("click", remove);
$("speaker-filter").addEventListener("change", applyFilter);
$("player").addEventListener("timeupdate", follow);
$("player").addEventListener("seeked", follow);
loadInfo();
