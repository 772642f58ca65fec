// Ovi playground: a form generated from the API's own OpenAPI document, the queue API to submit,
// its SSE status stream (with logs) for progress and previews, the result as a video.
// Plain browser JavaScript, no build step. Every network wait has a timeout.
"use strict";

const T2V = "fal-ai/ovi";
const I2V = "fal-ai/ovi/image-to-video";
const QUEUE = "/queue/";
const BASIC = ["prompt", "image_url", "resolution"]; // the rest goes under "Advanced"
const FETCH_TIMEOUT_MS = 60000; // one request/answer
const STREAM_STALL_MS = 45000; // no bytes (not even a ping) for this long: fall back to polling
const POLL_MS = 1000;
const HISTORY_KEY = "ovi-playground-history";
const KEY_KEY = "ovi-playground-key";

const $ = (id) => document.getElementById(id);
const state = { schemas: {}, options: [], fields: new Map(), imageData: null, job: null };

// --- small helpers ----------------------------------------------------------------------------

function timeoutSignal(ms, outer) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new Error(`no answer in ${ms / 1000} s`)), ms);
  if (outer) outer.addEventListener("abort", () => controller.abort(outer.reason));
  return { signal: controller.signal, done: () => clearTimeout(timer) };
}

async function fetchJson(url, init = {}, ms = FETCH_TIMEOUT_MS) {
  const t = timeoutSignal(ms, init.signal);
  try {
    const response = await fetch(url, { ...init, signal: t.signal });
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = { detail: text }; }
    return { response, body };
  } finally {
    t.done();
  }
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Key ${key}` } : {};
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

// Show a /files URL in an <img> or <video>. Usually the URL itself (an unguessable capability);
// when the server serves files only with the owner's key (`files_require_key`), the element's
// own request is refused, so the file is fetched with the key and shown from a blob: URL.
const blobUrls = new Map(); // element id -> its current blob: URL
function showMedia(element, url) {
  const old = blobUrls.get(element.id);
  if (old) { URL.revokeObjectURL(old); blobUrls.delete(element.id); }
  element.onerror = async () => {
    element.onerror = null;
    const t = timeoutSignal(FETCH_TIMEOUT_MS);
    try {
      const response = await fetch(url, { headers: authHeaders(), signal: t.signal });
      if (!response.ok) return;
      const blob = URL.createObjectURL(await response.blob());
      if (element.dataset.url !== url) { URL.revokeObjectURL(blob); return; } // replaced since
      blobUrls.set(element.id, blob);
      element.src = blob;
    } catch {
      // the element keeps its error state; nothing else to show
    } finally {
      t.done();
    }
  };
  element.dataset.url = url;
  element.src = url;
}

function resolveRef(schema, doc) {
  while (schema && schema.$ref) schema = doc.components.schemas[schema.$ref.split("/").pop()];
  return schema || {};
}

// anyOf [X, null] (an optional field) -> X
function plainSchema(schema, doc) {
  schema = resolveRef(schema, doc);
  if (schema.anyOf) {
    const inner = schema.anyOf.map((s) => resolveRef(s, doc)).find((s) => s.type !== "null");
    return { ...inner, ...schema, anyOf: undefined, type: inner && inner.type, nullable: true };
  }
  return schema;
}

// --- the form, from the OpenAPI document ------------------------------------------------------

async function loadForm() {
  const { response, body: doc } = await fetchJson("/openapi.json");
  if (!response.ok) throw new Error(`could not read /openapi.json (${response.status})`);
  for (const app of [T2V, I2V]) {
    const post = doc.paths[QUEUE + app] && doc.paths[QUEUE + app].post;
    if (!post) throw new Error(`the API has no ${QUEUE + app}`);
    const schema = resolveRef(post.requestBody.content["application/json"].schema, doc);
    state.schemas[app] = schema;
    if (app === T2V) state.options = (post.parameters || []).filter((p) => p.in !== "path");
  }
  // One control per field of either app, in the schemas' own order.
  const order = [];
  for (const app of [T2V, I2V]) {
    const schema = state.schemas[app];
    const names = schema["x-fal-order-properties"] || Object.keys(schema.properties);
    for (const name of names) if (!order.includes(name)) order.push(name);
  }
  for (const name of order) {
    const apps = [T2V, I2V].filter((a) => state.schemas[a].properties[name]);
    const app = apps[0];
    const schema = plainSchema(state.schemas[app].properties[name], doc);
    const required = (state.schemas[app].required || []).includes(name);
    const container = BASIC.includes(name) ? $("basic-fields") : $("advanced-fields");
    container.append(makeField(name, schema, { apps, required, kind: "body" }));
  }
  for (const param of state.options) {
    const schema = plainSchema(param.schema || {}, doc);
    const name = param.name;
    $("option-fields").append(
      makeField(name, { ...schema, description: param.description || schema.description },
        { apps: [T2V, I2V], required: !!param.required, kind: param.in })
    );
  }
  showMode();
}

function makeField(name, schema, { apps, required, kind }) {
  const id = `field-${name}`;
  const wrap = document.createElement("div");
  wrap.className = "field";
  wrap.dataset.apps = apps.join(" ");
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = (schema.title || name) + (required ? " (required)" : "");
  wrap.append(label);
  let input;
  if (Array.isArray(schema.enum)) {
    input = document.createElement("select");
    if (!required && schema.default === undefined) input.append(new Option("(default)", ""));
    for (const value of schema.enum) input.append(new Option(String(value), String(value)));
  } else if (schema.type === "boolean") {
    input = document.createElement("select");
    for (const value of ["", "true", "false"]) input.append(new Option(value || "(default)", value));
  } else if (name === "prompt" || /prompt/.test(name)) {
    input = document.createElement("textarea");
    if (name !== "prompt") input.rows = 2;
  } else {
    input = document.createElement("input");
    input.type = schema.type === "integer" || schema.type === "number" ? "number" : "text";
    if (schema.minimum !== undefined) input.min = schema.minimum;
    if (schema.maximum !== undefined) input.max = schema.maximum;
    if (schema.type === "integer") input.step = "1";
    if (schema.type === "number") input.step = "any";
    if (name === "image_url") input.type = "url";
  }
  input.id = id;
  input.name = name;
  if (schema.default !== undefined && schema.default !== null) input.value = String(schema.default);
  if (name === "prompt" && schema.examples && schema.examples.length) {
    input.placeholder = "e.g. " + schema.examples[0];
  }
  const help = document.createElement("p");
  help.className = "help";
  help.id = `${id}-help`;
  const range = schema.minimum !== undefined || schema.maximum !== undefined
    ? ` (${schema.minimum ?? "…"} to ${schema.maximum ?? "…"})` : "";
  help.textContent = (schema.description || "") + range;
  input.setAttribute("aria-describedby", help.id);
  wrap.append(input, help);
  state.fields.set(name, { input, schema, apps, required, kind, wrap });
  if (name === "prompt") wrap.append(promptHelpers(input));
  if (name === "image_url") wrap.append(imageUpload(input));
  return wrap;
}

// <S>...<E> around the selection (or a placeholder), "Audio: ..." appended once.
function promptHelpers(textarea) {
  const speech = helperButton(
    "speech-helper", "Speech <S>…<E>",
    "Wrap the selected words as spoken words, between <S> and <E>", () => {
    const { selectionStart: a, selectionEnd: b, value } = textarea;
    const words = value.slice(a, b) || "Hello there!";
    const gap = a > 0 && !/\s/.test(value[a - 1]) ? " " : "";
    const start = a + gap.length + 3;
    textarea.value = `${value.slice(0, a)}${gap}<S>${words}<E>${value.slice(b)}`;
    textarea.focus();
    textarea.setSelectionRange(start, start + words.length);
  });
  const audio = helperButton(
    "audio-helper", "Audio: caption",
    "Append an Audio: caption that describes the voices and sounds", () => {
    const text = textarea.value.trimEnd();
    if (!/Audio:|<AUDCAP>/.test(text)) {
      const placeholder = "describe the voices and sounds";
      textarea.value = `${text}${text ? " " : ""}Audio: ${placeholder}`;
      textarea.focus();
      textarea.setSelectionRange(textarea.value.length - placeholder.length, textarea.value.length);
    } else {
      textarea.focus();
    }
  });
  return helperBox(speech, audio);
}

// The row of small buttons (and inputs) under a field.
function helperBox(...children) {
  const box = document.createElement("div");
  box.className = "helpers";
  box.append(...children);
  return box;
}

function helperButton(id, text, title, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.id = id;
  button.textContent = text;
  button.title = title;
  button.addEventListener("click", onClick);
  return button;
}

// A file input next to image_url: the chosen file is sent as a data URI.
function imageUpload(urlInput) {
  const label = document.createElement("label");
  label.htmlFor = "image-file";
  label.textContent = "…or upload an image:";
  const file = document.createElement("input");
  file.type = "file";
  file.id = "image-file";
  file.accept = "image/png,image/jpeg,image/webp,image/gif";
  const thumb = document.createElement("img");
  thumb.id = "image-thumb";
  thumb.alt = "The uploaded first frame";
  thumb.hidden = true;
  file.addEventListener("change", () => {
    state.imageData = null;
    thumb.hidden = true;
    const chosen = file.files && file.files[0];
    if (!chosen) return;
    const reader = new FileReader();
    reader.onload = () => {
      state.imageData = reader.result;
      thumb.src = reader.result;
      thumb.hidden = false;
      urlInput.placeholder = `using the uploaded ${chosen.name}`;
    };
    reader.readAsDataURL(chosen);
  });
  return helperBox(label, file, thumb);
}

function currentApp() {
  return document.querySelector("input[name=mode]:checked").value;
}

function showMode() {
  const app = currentApp();
  for (const field of state.fields.values()) field.wrap.hidden = !field.apps.includes(app);
}

// --- submit and follow ------------------------------------------------------------------------

function collect(app) {
  const body = {};
  const headers = {};
  const query = new URLSearchParams();
  for (const [name, field] of state.fields) {
    if (!field.apps.includes(app)) continue;
    const { input, schema, kind } = field;
    let value = input.value;
    if (name === "image_url" && state.imageData && !value.trim()) value = state.imageData;
    if (value === "") continue; // the server default (or its "Field required")
    if (kind === "body") {
      if ((schema.type === "integer" || schema.type === "number") && value !== "") {
        const number = Number(value);
        value = Number.isNaN(number) ? value : number; // let the API say what is wrong
      } else if (schema.type === "boolean") {
        value = value === "true";
      } else if (schema.type === "array" || schema.type === "object") {
        try {
          value = JSON.parse(value); // e.g. lora: [{"path": "style.safetensors", "scale": 0.8}]
        } catch {
          // sent as typed: the API says what is wrong
        }
      }
      body[name] = value;
    } else if (kind === "header") {
      headers[name] = value;
    } else if (kind === "query") {
      query.set(name, value);
    }
  }
  return { body, headers, query };
}

function clearResult() {
  $("error").hidden = true;
  $("error").textContent = "";
  for (const field of state.fields.values()) field.input.removeAttribute("aria-invalid");
  $("progress").value = 0;
  $("progress").max = 1;
  $("eta").textContent = "";
  $("preview-figure").hidden = true;
  $("video-figure").hidden = true;
  $("video").removeAttribute("src");
}

// The API's own message: a 422 `detail` list as "field: message" lines, else `detail`.
function errorText(body, status) {
  const detail = body && body.detail;
  if (Array.isArray(detail)) {
    return detail.map((item) => {
      const where = (item.loc || []).filter((part) => part !== "body").join(".");
      return where ? `${where}: ${item.msg}` : item.msg;
    }).join("\n");
  }
  if (typeof detail === "string" && detail) return detail;
  if (body && body.error) return body.error;
  return `HTTP ${status}`;
}

function showError(body, status) {
  const text = errorText(body, status);
  $("error").textContent = text;
  $("error").hidden = false;
  let first = null;
  for (const item of (body && Array.isArray(body.detail) ? body.detail : [])) {
    const name = (item.loc || [])[1];
    const field = state.fields.get(name);
    if (field) {
      field.input.setAttribute("aria-invalid", "true");
      if (field.wrap.closest("details")) field.wrap.closest("details").open = true;
      first = first || field.input;
    }
  }
  if (first) first.focus();
  return text;
}

async function submit(event) {
  if (event) event.preventDefault();
  if (state.job) return;
  clearResult();
  const app = currentApp();
  const { body, headers, query } = collect(app);
  const qs = query.toString();
  setPhase("Submitting…");
  let answer;
  try {
    answer = await fetchJson(QUEUE + app + (qs ? `?${qs}` : ""), {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders(), ...headers },
      body: JSON.stringify(body),
    });
  } catch (error) {
    setPhase("Not submitted.");
    showError({ detail: `Could not reach the server: ${error.message || error}` }, 0);
    return;
  }
  const { response, body: reply } = answer;
  if (!response.ok) {
    setPhase(`Refused (HTTP ${response.status}).`);
    const text = showError(reply, response.status);
    addHistory({ id: null, app, prompt: body.prompt || "", status: "refused", error: text });
    return;
  }
  const job = { ...reply, app, prompt: body.prompt || "", controller: new AbortController() };
  state.job = job;
  $("submit").disabled = true;
  $("cancel").disabled = false;
  addHistory({ id: job.request_id, app, prompt: job.prompt, status: "IN_QUEUE" });
  try {
    await follow(job);
    await finish(job);
  } catch (error) {
    showError({ detail: `Lost track of ${job.request_id}: ${error.message || error}` }, 0);
    updateHistory(job.request_id, { status: "unknown" });
  } finally {
    state.job = null;
    $("submit").disabled = false;
    $("cancel").disabled = true;
  }
}

function setPhase(text) { $("phase").textContent = text; }

const STEP_RE = /^Step (\d+)\/(\d+) \(([\d.]+)s\)/;
const PREVIEW_RE = /^Preview (\d+)\/(\d+): (\S+)/;

function onStatus(job, status) {
  if (status.status === "IN_QUEUE") {
    setPhase(`In queue (position ${status.queue_position ?? 0}).`);
  } else if (status.status === "IN_PROGRESS" && !job.steps) {
    setPhase("Running: encoding the prompt…");
  }
  for (const entry of status.logs || []) onLog(job, entry.message || "");
  updateHistory(job.request_id, { status: status.status });
}

function onLog(job, message) {
  let match = STEP_RE.exec(message);
  if (match) {
    const [step, total, elapsed] = [Number(match[1]), Number(match[2]), Number(match[3])];
    job.steps = step;
    $("progress").max = total;
    $("progress").value = step;
    setPhase(`Denoising: step ${step}/${total}`);
    const eta = step < total ? (elapsed / step) * (total - step) : 0;
    $("eta").textContent = step < total
      ? `${elapsed.toFixed(1)} s elapsed, about ${eta.toFixed(1)} s left`
      : `Denoised in ${elapsed.toFixed(1)} s; decoding…`;
    return;
  }
  match = PREVIEW_RE.exec(message);
  if (match) {
    showMedia($("preview"), match[3]);
    $("preview").alt = `Preview of the current estimate after step ${match[1]} of ${match[2]}`;
    $("preview-caption").textContent = `Preview after step ${match[1]}/${match[2]} (latent sketch)`;
    $("preview-figure").hidden = false;
    return;
  }
  if (message.startsWith("Encoding MP4")) setPhase("Encoding the video…");
}

// Follow the job until COMPLETED: the SSE stream first; polling if the stream stalls or drops.
async function follow(job) {
  const url = `${job.status_url}/stream?logs=1`;
  try {
    if (await followStream(job, url)) return;
  } catch (error) {
    if (job.controller.signal.aborted) throw error;
  }
  while (true) {
    const { response, body } = await fetchJson(`${job.status_url}?logs=1`, { headers: authHeaders() });
    if (!response.ok && response.status !== 202) throw new Error(errorText(body, response.status));
    job.logsSeen = job.logsSeen || 0;
    const fresh = (body.logs || []).slice(job.logsSeen);
    job.logsSeen += fresh.length;
    onStatus(job, { ...body, logs: fresh });
    if (body.status === "COMPLETED") return;
    await sleep(POLL_MS);
  }
}

async function followStream(job, url) {
  const controller = new AbortController();
  let timer = setTimeout(() => controller.abort(), STREAM_STALL_MS);
  const response = await fetch(url, { headers: authHeaders(), signal: controller.signal });
  if (!response.ok) {
    clearTimeout(timer);
    return false;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  job.logsSeen = 0;
  try {
    while (true) {
      const { value, done } = await reader.read();
      clearTimeout(timer);
      if (done) return false;
      timer = setTimeout(() => controller.abort(), STREAM_STALL_MS);
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trim()).join("\n");
        if (!data) continue; // a ": ping"
        const status = JSON.parse(data);
        job.logsSeen += (status.logs || []).length;
        onStatus(job, status);
        if (status.status === "COMPLETED") return true;
      }
    }
  } finally {
    clearTimeout(timer);
    controller.abort();
  }
}

async function finish(job) {
  const { response, body } = await fetchJson(job.response_url, { headers: authHeaders() });
  if (!response.ok) {
    const text = showError(body, response.status);
    const cancelled = response.status === 499;
    setPhase(cancelled ? "Cancelled." : `Failed (HTTP ${response.status}).`);
    updateHistory(job.request_id, { status: cancelled ? "cancelled" : "failed", error: text });
    return;
  }
  showVideo(body.video.url, `Seed ${body.seed}`);
  setPhase("Done.");
  $("eta").textContent = $("eta").textContent.replace("; decoding…", ".");
  updateHistory(job.request_id, { status: "done", video: body.video.url, seed: body.seed });
}

function showVideo(url, caption) {
  const video = $("video");
  showMedia(video, url);
  $("video-caption").textContent = caption;
  $("video-figure").hidden = false;
}

async function cancel() {
  const job = state.job;
  if (!job) return;
  $("cancel").disabled = true;
  const { response, body } = await fetchJson(job.cancel_url, { method: "PUT", headers: authHeaders() });
  if (!response.ok && response.status !== 202) showError(body, response.status);
  else setPhase("Cancelling…");
}

// --- history (this tab only) ------------------------------------------------------------------

function loadHistory() {
  try { return JSON.parse(sessionStorage.getItem(HISTORY_KEY) || "[]"); } catch { return []; }
}

function saveHistory(items) {
  sessionStorage.setItem(HISTORY_KEY, JSON.stringify(items.slice(0, 50)));
  renderHistory();
}

function addHistory(item) {
  saveHistory([{ ...item, at: new Date().toISOString() }, ...loadHistory()]);
}

function updateHistory(id, changes) {
  if (!id) return;
  const items = loadHistory();
  const item = items.find((it) => it.id === id);
  if (!item) return;
  if (item.status === changes.status && !changes.video && !changes.error) return;
  Object.assign(item, changes);
  saveHistory(items);
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren();
  for (const item of loadHistory()) {
    const li = document.createElement("li");
    const title = document.createElement("div");
    const mode = item.app === I2V ? "image to video" : "text to video";
    title.textContent = `${item.prompt.slice(0, 80) || "(no prompt)"}`;
    const status = document.createElement("div");
    status.className = "status" + (item.error ? " failed" : "");
    const time = new Date(item.at).toLocaleTimeString();
    status.textContent = `${time} · ${mode} · ${item.status}` + (item.error ? `: ${item.error}` : "");
    li.append(title, status);
    if (item.video) {
      const show = document.createElement("button");
      show.type = "button";
      show.textContent = "Play";
      show.setAttribute("aria-label", `Play the video of ${item.prompt.slice(0, 40)}`);
      show.addEventListener("click", () => {
        showVideo(item.video, `Seed ${item.seed}`);
        $("video").focus();
      });
      li.append(show);
    }
    list.append(li);
  }
}

// --- start ------------------------------------------------------------------------------------

async function showHealth() {
  try {
    const { body } = await fetchJson("/health", {}, 10000);
    $("server-status").textContent = `Model ${body.model}: ${body.status}` +
      ` · ${body.queue ? body.queue.in_queue : 0} queued`;
  } catch (error) {
    $("server-status").textContent = `Server unreachable: ${error.message || error}`;
  }
}

async function start() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_KEY) || "";
  key.addEventListener("change", () => sessionStorage.setItem(KEY_KEY, key.value));
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", showMode);
  }
  $("request-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  $("clear-history").addEventListener("click", () => saveHistory([]));
  renderHistory();
  showHealth();
  try {
    await loadForm();
  } catch (error) {
    showError({ detail: `Could not build the form: ${error.message || error}` }, 0);
    return;
  }
  const prompt = state.fields.get("prompt");
  if (prompt) {
    prompt.input.id = "prompt"; // the skip link's target
    prompt.wrap.querySelector("label").htmlFor = "prompt";
    prompt.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) submit(event);
    });
  }
  document.body.dataset.ready = "true";
}

start();
