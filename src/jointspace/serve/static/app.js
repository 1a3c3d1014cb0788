// jointspace search page: text box + drop zone -> POST /search -> gallery. No network beyond this server.
"use strict";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get("token") || sessionStorage.getItem("jointspace-token") || "";
if (token) sessionStorage.setItem("jointspace-token", token);
let kinds = {};

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function whereObject() {
  const out = {};
  for (const part of $("where").value.split("&")) {
    const i = part.indexOf("=");
    if (i < 1) continue;
    const key = part.slice(0, i).trim(), value = part.slice(i + 1).trim();
    out[key] = key in out ? [].concat(out[key], value) : value;
  }
  if ($("target").value) out.modality = $("target").value;
  return out;
}

async function loadStats() {
  try {
    const r = await fetch("/stats", { headers: authHeaders() });
    if (!r.ok) throw new Error((await r.json()).detail || r.status);
    const s = await r.json();
    kinds = s.query_modalities || {};
    $("index-info").textContent = `${s.n_items} items, ${s.n_samples} samples, ${s.factory}, dim ${s.dim}`;
    for (const m of Object.keys(s.modalities || {})) $("target").add(new Option(m, m));
    for (const [m, kind] of Object.entries(kinds)) {
      if (kind !== "text") $("file-modality").add(new Option(`${m} (${kind})`, m));
    }
  } catch (err) {
    setStatus("could not read /stats: " + err.message, true);
  }
}

async function showThumb(img, key) {
  const url = `/items/${encodeURIComponent(key)}/thumbnail`;
  if (!token) { img.src = url; return; }
  const r = await fetch(url, { headers: authHeaders() });
  if (r.ok) img.src = URL.createObjectURL(await r.blob());
}

function render(data, label) {
  const hits = data.results.flatMap((r) => r.hits);
  const box = $("results");
  box.replaceChildren();
  for (const h of hits) {
    const card = document.createElement("div");
    card.className = "result";
    card.dataset.key = h.key;
    card.dataset.modality = h.modality;
    card.dataset.score = h.score;
    let pic;
    if (h.has_thumbnail) {
      pic = document.createElement("img");
      pic.alt = h.key;
      pic.className = "thumb";
      showThumb(pic, h.key);
    } else {
      pic = document.createElement("div");
      pic.className = "noimg";
      pic.textContent = h.modality;
    }
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = h.score.toFixed(3) + " ";
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = h.modality;
    score.append(badge);
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `${h.label_name ?? h.label ?? ""} · ${h.split ?? ""} · ${h.key}`;
    const cap = document.createElement("div");
    cap.className = "caption";
    cap.textContent = h.caption || "";
    const flags = document.createElement("div");
    flags.className = "flags";
    flags.textContent = (h.audit || []).map((f) => f.issue + (f.partner_key ? ` (${f.partner_key})` : "")).join(", ");
    card.append(pic, score, meta, cap, flags);
    box.append(card);
  }
  setStatus(`${hits.length} results for ${label} in ${data.took_ms.toFixed(1)} ms`, false);
}

async function send(body, headers, label) {
  setStatus("searching…", false);
  try {
    const r = await fetch("/search", { method: "POST", body, headers: authHeaders(headers) });
    const data = await r.json();
    if (!r.ok) {
      const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      setStatus(`error ${r.status}: ${detail}`, true);
      $("results").replaceChildren();
      return;
    }
    render(data, label);
  } catch (err) {
    setStatus("request failed: " + err.message, true);
  }
}

function searchText(text) {
  if (!text.trim()) return;
  const body = JSON.stringify({ text, k: Number($("k").value) || 10, where: whereObject() });
  return send(body, { "Content-Type": "application/json" }, `"${text}"`);
}

function guessModality(file) {
  // keep the chosen modality if it fits the file (.npy -> frames / range image, else an image)
  const fits = (kind) => (file.name.toLowerCase().endsWith(".npy") ? kind !== "image" : kind === "image");
  const chosen = $("file-modality").value;
  if (chosen && fits(kinds[chosen])) return chosen;
  const hit = Object.entries(kinds).find(([, kind]) => kind !== "text" && fits(kind));
  return hit ? hit[0] : chosen;
}

function searchFile(file) {
  const modality = guessModality(file);
  $("file-modality").value = modality;
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("modality", modality);
  form.append("k", String(Number($("k").value) || 10));
  const where = $("where").value.trim();
  const parts = [where, $("target").value ? "modality=" + $("target").value : ""].filter(Boolean);
  if (parts.length) form.append("where", parts.join("&"));
  return send(form, {}, `${file.name} (${modality})`);
}

$("search-form").addEventListener("submit", (e) => { e.preventDefault(); searchText($("q").value); });
const drop = $("drop");
drop.addEventListener("click", (e) => { if (e.target.tagName !== "SELECT") $("file").click(); });
$("file").addEventListener("change", () => { if ($("file").files.length) searchFile($("file").files[0]); });
for (const ev of ["dragenter", "dragover"]) {
  drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer && e.dataTransfer.files.length) searchFile(e.dataTransfer.files[0]);
});

loadStats().then(() => {
  const q = params.get("q");
  if (q) { $("q").value = q; searchText(q); }
});
