// tsmixit serve: the page's script. Plain JavaScript, no library, nothing from elsewhere.
"use strict";

const COLOURS = ["#2563eb", "#e11d48", "#059669", "#d97706", "#7c3aed", "#0891b2",
                 "#db2777", "#65a30d"];
const MIXTURE_COLOUR = "#475569";
const POLL_MS = 400;
const PLAY_ICON = '<svg viewBox="0 0 16 16"><path d="M4 2.5v11l9-5.5z"/></svg>';
const PAUSE_ICON = '<svg viewBox="0 0 16 16"><path d="M3.5 2h3v12h-3zM9.5 2h3v12h-3z"/></svg>';

const $ = (id) => document.getElementById(id);
const state = { info: null, job: null, poll: null, playing: null, recorder: null };

// ---- small helpers ------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function clock(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  const m = Math.floor(seconds / 60);
  const s = seconds - 60 * m;
  return `${m}:${s < 10 ? "0" : ""}${s.toFixed(1)}`;
}

function megabytes(bytes) { return `${(bytes / 1e6).toFixed(1)} MB`; }

function kilohertz(rate) { return `${(rate / 1000).toLocaleString("en")} kHz`; }

function showError(box, message, title = "Not separated") {
  box.replaceChildren(el("strong", { text: title }), el("span", { text: message }));
  box.hidden = false;
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

// ---- a player: play button, waveform, spectrogram, playhead -------------------------------

function peakOf(tracks) {
  // The largest |sample| of a group of tracks: their waveforms share one scale.
  let top = 1e-4;
  for (const track of tracks) for (const [lo, hi] of track.peaks || []) top = Math.max(top, -lo, hi);
  return top;
}

function drawWave(canvas, peaks, fraction, colour, top) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  if (!peaks || !peaks.length) return;
  const mid = height / 2;
  const scale = (height / 2 - 2 * ratio) / top;
  const played = fraction * width;
  for (let x = 0; x < width; x++) {
    const i = Math.min(peaks.length - 1, Math.floor((x / width) * peaks.length));
    const [lo, hi] = peaks[i];
    ctx.fillStyle = x <= played ? colour : `${colour}80`;
    const y0 = mid - hi * scale;
    ctx.fillRect(x, y0, 1, Math.max(ratio, (hi - lo) * scale));
  }
}

function makeTrack(track, colour, { compact = false, download = true, top = 1 } = {}) {
  const audio = el("audio", { preload: "metadata", src: track.audio });
  const play = el("button", { type: "button", class: "play", "aria-label": `Play ${track.label}` });
  play.innerHTML = PLAY_ICON;
  const time = el("span", { class: "time", text: `0:00.0 / ${clock(track.seconds)}` });
  const canvas = el("canvas", { class: "wave", "aria-hidden": "true" });
  const spec = el("img", { class: "spec", src: track.spectrogram, alt: `Spectrogram of ${track.label}`,
                           loading: "lazy" });
  const head = el("div", { class: "playhead rest" });
  const viz = el("div", { class: "viz", title: "Click to play from here" }, canvas, spec, head);
  const title = el("div", { class: "track-title" }, el("h3", { text: track.label }));
  const side = el("div", { class: "track-side" }, title,
                  el("div", { class: "track-controls" }, play, time));
  if (download) {
    const dot = (track.filename || "").lastIndexOf(".");
    const kind = dot > 0 ? track.filename.slice(dot + 1).toUpperCase() : "file";
    side.append(el("a", { class: "icon-link", href: `${track.audio}?download=1`,
                          download: track.filename || "", text: `Download ${kind}` }));
  }
  const card = el("article", { class: compact ? "track compact" : "track",
                               "data-track": track.key }, side, viz, audio);
  card.style.setProperty("--hue", colour);

  const duration = () => (Number.isFinite(audio.duration) ? audio.duration : track.seconds);
  const render = () => {
    const fraction = duration() ? Math.min(1, audio.currentTime / duration()) : 0;
    drawWave(canvas, track.peaks, fraction, colour, top);
    head.style.left = `calc(${(fraction * 100).toFixed(3)}% - 1px)`;
    head.classList.toggle("rest", audio.paused && audio.currentTime === 0);
    time.textContent = `${clock(audio.currentTime)} / ${clock(duration())}`;
  };
  let frame = null;
  const loop = () => { render(); frame = audio.paused ? null : requestAnimationFrame(loop); };
  audio.addEventListener("play", () => {
    if (state.playing && state.playing !== audio) state.playing.pause();
    state.playing = audio;
    play.innerHTML = PAUSE_ICON;
    play.setAttribute("aria-label", `Pause ${track.label}`);
    if (!frame) loop();
  });
  audio.addEventListener("pause", () => {
    play.innerHTML = PLAY_ICON;
    play.setAttribute("aria-label", `Play ${track.label}`);
    render();
  });
  audio.addEventListener("loadedmetadata", render);
  audio.addEventListener("seeked", render);
  audio.addEventListener("error", () => { time.textContent = "cannot play this file"; });
  play.addEventListener("click", () => (audio.paused ? audio.play() : audio.pause()));
  viz.addEventListener("click", (event) => {
    const box = viz.getBoundingClientRect();
    const fraction = Math.min(1, Math.max(0, (event.clientX - box.left) / box.width));
    if (duration()) audio.currentTime = fraction * duration();
    if (audio.paused) audio.play();
  });
  new ResizeObserver(render).observe(canvas);
  return card;
}

// ---- the separate view --------------------------------------------------------------------

function selectedModel() {
  return state.info.models.find((m) => m.id === $("model").value) || state.info.models[0];
}

function describeModel(model) {
  const voices = `${model.n_outputs} output${model.n_outputs === 1 ? "" : "s"}`;
  const mics = `${model.n_channels} microphone${model.n_channels === 1 ? "" : "s"}`;
  const params = model.parameters >= 1e6 ? `${(model.parameters / 1e6).toFixed(1)} M`
    : `${Math.round(model.parameters / 1e3)} k`;
  return `${model.class} · ${kilohertz(model.sample_rate)} · ${voices} · ${mics} · ` +
    `${params} parameters · ${model.path}`;
}

function setBusy(busy) {
  $("drop").classList.toggle("busy", busy);
  $("model").disabled = busy;
}

function setStatus(text, fraction, figure = "") {
  $("status").hidden = false;
  $("status-text").textContent = text;
  $("status-figure").textContent = figure;
  const percent = Math.round(100 * Math.max(0, Math.min(1, fraction)));
  $("progress-bar").style.width = `${percent}%`;
  $("progress").setAttribute("aria-valuenow", String(percent));
}

function tooLarge(name, size) {
  return `${name} (${megabytes(size)}) is larger than this server's upload limit of ` +
    `${megabytes(state.info.max_upload_bytes)}; upload a shorter recording, or restart the ` +
    "server with a larger --max-upload-mb.";
}

function upload(file) {
  $("error").hidden = true;
  if (!file) return;
  if (file.size > state.info.max_upload_bytes) {
    showError($("error"), tooLarge(file.name, file.size));
    return;
  }
  if (state.job) {  // the page shows one separation: the previous one's files go
    fetch(`/api/jobs/${state.job}`, { method: "DELETE" }).catch(() => {});
    state.job = null;
  }
  if (state.playing) state.playing.pause();
  $("results").hidden = true;
  setBusy(true);
  setStatus(`Uploading ${file.name}…`, 0);
  const model = selectedModel();
  const query = new URLSearchParams({ model: model.id, filename: file.name });
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/api/separate?${query}`);
  xhr.setRequestHeader("Content-Type", "application/octet-stream");
  xhr.upload.addEventListener("progress", (event) => {
    if (event.lengthComputable) {
      setStatus(`Uploading ${file.name}…`, event.loaded / event.total,
                `${megabytes(event.loaded)} of ${megabytes(event.total)}`);
    }
  });
  xhr.addEventListener("load", () => {
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch (_) { body = null; }
    if (xhr.status !== 202 || !body) {
      fail((body && body.error) || `the server answered ${xhr.status}`);
      return;
    }
    state.job = body.id;
    poll(body.id);
  });
  xhr.addEventListener("error", () => {
    fail(`the upload of ${file.name} failed (the connection closed); is the server still ` +
         "running?");
  });
  xhr.send(file);
}

function fail(message) {
  setBusy(false);
  $("status").hidden = true;
  showError($("error"), message);
}

async function poll(id) {
  let job;
  try {
    job = await getJSON(`/api/jobs/${id}`);
  } catch (error) {
    fail(error.message);
    return;
  }
  if (id !== state.job) return;  // a newer upload took over
  if (job.status === "queued") {
    setStatus("Waiting for the separator (another recording is being separated)…", 0);
  } else if (job.status === "running") {
    const total = job.seconds_total;
    const figure = total ? `${Math.min(job.seconds_done, total).toFixed(1)} of ${total.toFixed(1)} s` : "";
    const phase = job.phase === "drawing" ? "Drawing waveforms and spectrograms…"
      : job.phase === "separating" ? `Separating ${job.filename}…` : "Reading the recording…";
    setStatus(phase, job.progress, figure);
  } else if (job.status === "done") {
    setStatus("Done", 1);
    setBusy(false);
    $("status").hidden = true;
    showResults(job);
    return;
  } else {
    fail(job.error || "the separation was cancelled.");
    return;
  }
  state.poll = setTimeout(() => poll(id), POLL_MS);
}

function showResults(job) {
  const r = job.result;
  const model = state.info.models.find((m) => m.id === job.model);
  $("result-title").textContent = job.filename;
  const channels = `${r.channels} channel${r.channels === 1 ? "" : "s"}`;
  $("result-meta").textContent =
    `${clock(r.seconds)} at ${kilohertz(r.sample_rate)}, ${channels} · separated by ` +
    `${job.model}${model ? ` (${model.class})` : ""} in ${r.wall_seconds.toFixed(1)} s ` +
    `(${r.rtf.toFixed(2)}× real time, ${r.chunks} chunk${r.chunks === 1 ? "" : "s"})`;
  $("notes").replaceChildren(...r.notes.map((note) => el("li", { text: note })));
  $("zip").href = job.zip;
  const top = peakOf(job.tracks);
  const tracks = job.tracks.map((track, i) => makeTrack(
    track, track.key === "mixture" ? MIXTURE_COLOUR : COLOURS[(i - 1) % COLOURS.length], { top }));
  $("tracks").replaceChildren(...tracks);
  $("results").hidden = false;
}

// ---- microphone ---------------------------------------------------------------------------

function encodeWav(buffer) {
  // 16-bit PCM WAV of an AudioBuffer, channels interleaved.
  const channels = buffer.numberOfChannels;
  const frames = buffer.length;
  const data = new DataView(new ArrayBuffer(44 + frames * channels * 2));
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) data.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); data.setUint32(4, 36 + frames * channels * 2, true); text(8, "WAVE");
  text(12, "fmt "); data.setUint32(16, 16, true); data.setUint16(20, 1, true);
  data.setUint16(22, channels, true); data.setUint32(24, buffer.sampleRate, true);
  data.setUint32(28, buffer.sampleRate * channels * 2, true);
  data.setUint16(32, channels * 2, true); data.setUint16(34, 16, true);
  text(36, "data"); data.setUint32(40, frames * channels * 2, true);
  const planes = Array.from({ length: channels }, (_, c) => buffer.getChannelData(c));
  let offset = 44;
  for (let i = 0; i < frames; i++) {
    for (let c = 0; c < channels; c++) {
      const v = Math.max(-1, Math.min(1, planes[c][i]));
      data.setInt16(offset, v < 0 ? v * 0x8000 : v * 0x7fff, true);
      offset += 2;
    }
  }
  return new Blob([data], { type: "audio/wav" });
}

async function startRecording() {
  $("error").hidden = true;
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    showError($("error"), "this browser gives the page no microphone here: it allows one only " +
      "on a secure address; open the page at 127.0.0.1 or localhost.");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false,
      noiseSuppression: false, autoGainControl: false } });
  } catch (error) {
    showError($("error"), `no microphone: ${error.message}`);
    return;
  }
  const recorder = new MediaRecorder(stream);
  const pieces = [];
  const started = Date.now();
  recorder.addEventListener("dataavailable", (event) => pieces.push(event.data));
  const timer = setInterval(() => {
    $("rec-time").textContent = clock((Date.now() - started) / 1000).replace(/\.\d$/, "");
  }, 250);
  state.recorder = { recorder, stream, pieces, timer, keep: true };
  recorder.addEventListener("stop", async () => {
    clearInterval(timer);
    stream.getTracks().forEach((t) => t.stop());
    $("recorder").hidden = true;
    setBusy(false);
    if (!state.recorder.keep) return;
    try {
      const bytes = await new Blob(pieces).arrayBuffer();
      const context = new AudioContext();
      const decoded = await context.decodeAudioData(bytes);
      context.close();
      const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
      upload(new File([encodeWav(decoded)], `microphone-${stamp}.wav`, { type: "audio/wav" }));
    } catch (error) {
      showError($("error"), `the recording could not be decoded: ${error.message}`);
    }
  });
  recorder.start();
  $("rec-time").textContent = "0:00";
  $("recorder").hidden = false;
  setBusy(true);
}

function stopRecording(keep) {
  if (!state.recorder) return;
  state.recorder.keep = keep;
  state.recorder.recorder.stop();
}

// ---- the run view -------------------------------------------------------------------------

function number(value, digits = 2) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function duration(seconds) {
  if (!seconds) return "–";
  return seconds < 90 ? `${Math.round(seconds)} s` : `${(seconds / 60).toFixed(1)} min`;
}

function showRun(run) {
  $("run-title").textContent = `Run results: ${run.name}`;
  const first = run.rows[0];
  $("run-meta").textContent = first
    ? `${first.n_mixtures} test mixtures, k = ${run.k} references. SI-SNRi and SDRi in dB over the mixture.`
    : "No evaluated systems in this run yet.";
  const sets = [...new Set(run.rows.flatMap((r) => Object.keys(r.sets || {})))];
  const head = el("tr", {},
    el("th", { text: "System" }), el("th", { class: "num", text: "Mics" }),
    el("th", { class: "num", text: "SI-SNRi" }), el("th", { class: "num", text: "SDRi" }),
    ...sets.map((s) => el("th", { class: "num", text: `${s} SI-SNRi` })),
    el("th", { class: "num", text: "Active outputs" }), el("th", { class: "num", text: "Over-separated" }),
    el("th", { class: "num", text: "Labelled mixtures" }), el("th", { class: "num", text: "Training time" }));
  const best = Math.max(...run.rows.map((r) => (r.si_snri === null ? -Infinity : r.si_snri)));
  const rows = run.rows.map((r) => {
    const active = r.active_outputs === null ? "–" : `${number(r.active_outputs)} / ${r.n_outputs}`;
    const over = r.over_separated === null ? "–" : `${Math.round(100 * r.over_separated)} %`;
    const time = r.total_seconds && r.total_seconds !== r.stage_seconds
      ? `${duration(r.stage_seconds)} (${duration(r.total_seconds)} total)` : duration(r.stage_seconds);
    return el("tr", { class: r.si_snri === best ? "best" : null },
      el("td", { text: r.label }), el("td", { class: "num", text: String(r.n_channels) }),
      el("td", { class: "num", text: number(r.si_snri) }), el("td", { class: "num", text: number(r.sdri) }),
      ...sets.map((s) => el("td", { class: "num", text: r.sets && r.sets[s] ? number(r.sets[s].si_snri) : "–" })),
      el("td", { class: "num", text: active }), el("td", { class: "num", text: over }),
      el("td", { class: "num", text: r.labelled_mixtures === null ? "–" : String(r.labelled_mixtures) }),
      el("td", { class: "num", text: time }));
  });
  $("run-table").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
  $("run-table-note").textContent = "Top-k: the k most energetic outputs; oracle: the best " +
    "grouping of all outputs into k. The best SI-SNRi is highlighted.";

  $("run-claims").replaceChildren(...run.claims.map((c) => {
    const kind = c.status === "holds" ? "holds" : c.status === "does not hold" ? "fails" : "";
    return el("li", {}, el("span", { class: `pill ${kind}`, text: c.status }),
      el("div", {}, el("div", { text: c.claim }), el("div", { class: "claim-detail", text: c.detail })));
  }));

  showListen(run);

  $("run-plots").replaceChildren(...run.plots.map((p) => el("figure", {},
    el("a", { href: p.url, target: "_blank", rel: "noopener" },
      el("img", { src: p.url, alt: p.name, loading: "lazy" })),
    el("figcaption", { text: p.name.replace(/\.png$/, "").replace(/_/g, " ") }))));
}

// The kept test mixtures: a picker, and for the picked one its mixture and true sources, then
// each system's estimates. A mixture's tracks are fetched when it is first picked.

function scoreText(entry, oracle, k) {
  const db = (v) => `${Number(v).toFixed(2)} dB`;
  if (entry.si_snri_topk === undefined) return "";
  if (oracle && entry.si_snri_oracle !== undefined) {
    return `SI-SNRi ${db(entry.si_snri_topk)} top-${k} · ${db(entry.si_snri_oracle)} oracle`;
  }
  return `SI-SNRi ${db(entry.si_snri_topk)}`;
}

async function buildMixture(run, mixture) {
  const examples = await Promise.all(mixture.systems.map((s) => getJSON(s.url)));
  const all = examples.flatMap((e) => e.tracks);
  const top = peakOf(all);
  const truth = examples[0].tracks.filter((t) => t.group === "mixture" || t.group === "references");
  const panel = el("div", { class: "mixture-panel" });
  const block = el("div", { class: "tracks grid" });
  truth.forEach((t, i) => block.append(makeTrack(t, t.group === "mixture" ? MIXTURE_COLOUR
    : COLOURS[(i - 1) % COLOURS.length], { compact: true, download: false, top })));
  panel.append(el("div", { class: "system truth" },
    el("div", { class: "system-head" }, el("h3", { text: "Mixture and true sources" }),
      el("span", { class: "meta", text: `${clock(truth[0].seconds)} · ${mixture.id}` })), block));
  examples.forEach((example, e) => {
    const oracle = example.tracks.some((t) => t.group === "oracle");
    const list = el("div", { class: "tracks grid" });
    const seen = {};  // tracks so far per group: estimate i and oracle group i share a colour
    for (const t of example.tracks) {
      if (t.group === "mixture" || t.group === "references") continue;
      const n = seen[t.group] = (seen[t.group] ?? -1) + 1;
      const colour = t.group === "others" ? MIXTURE_COLOUR : COLOURS[n % COLOURS.length];
      list.append(makeTrack(t, colour, { compact: true, download: false, top }));
    }
    panel.append(el("div", { class: "system", "data-system": example.system },
      el("div", { class: "system-head" }, el("h3", { text: example.label }),
        el("span", { class: "score", text: scoreText(mixture.systems[e], oracle, run.k || 2) })), list));
  });
  return panel;
}

function showListen(run) {
  const box = $("run-examples");
  if (!run.mixtures.length) { box.replaceChildren(); return; }
  const panels = new Map();  // mixture index -> its built panel (a promise)
  const holder = el("div", { class: "mixture-holder", role: "tabpanel", "aria-live": "polite" });
  const tabs = run.mixtures.map((m, i) => el("button", {
    type: "button", role: "tab", class: "pick", "data-mixture": m.id, title: m.id },
    el("span", { class: "pick-n", text: `Mixture ${i + 1}` }), el("span", { class: "pick-id", text: m.id })));
  const pick = async (i) => {
    if (state.playing) state.playing.pause();
    tabs.forEach((tab, j) => {
      tab.setAttribute("aria-selected", String(i === j));
      tab.tabIndex = i === j ? 0 : -1;
    });
    if (!panels.has(i)) panels.set(i, buildMixture(run, run.mixtures[i]));
    holder.replaceChildren(el("p", { class: "meta loading", text: "Loading the tracks…" }));
    try {
      const panel = await panels.get(i);
      if (tabs[i].getAttribute("aria-selected") === "true") holder.replaceChildren(panel);
    } catch (error) {
      panels.delete(i);
      const alert = el("div", { class: "alert", role: "alert" });
      showError(alert, error.message, "This mixture's tracks cannot be shown");
      holder.replaceChildren(alert);
    }
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => pick(i));
    tab.addEventListener("keydown", (event) => {
      const step = event.key === "ArrowRight" ? 1 : event.key === "ArrowLeft" ? -1 : 0;
      if (!step) return;
      const j = (i + step + tabs.length) % tabs.length;
      tabs[j].focus();
      pick(j);
    });
  });
  const systems = new Set(run.mixtures.flatMap((m) => m.systems.map((s) => s.system))).size;
  const card = el("div", { class: "card listen" },
    el("h2", { text: "Listen: test mixtures" }),
    el("p", { class: "meta", text: `${run.mixtures.length} test mixture` +
      `${run.mixtures.length === 1 ? "" : "s"} kept for each of ${systems} system` +
      `${systems === 1 ? "" : "s"}: the mixture and its true sources, then what each system ` +
      "made of it (estimates in the order of the true sources; waveforms on one scale)." }),
    el("div", { class: "picker", role: "tablist", "aria-label": "Test mixture" }, ...tabs),
    holder);
  box.replaceChildren(card);
  pick(0);
}

let runLoaded = false;

async function showView() {
  const wantRun = location.hash === "#run" && state.info.run;
  $("view-separate").hidden = wantRun;
  $("view-run").hidden = !wantRun;
  $("tab-separate").classList.toggle("active", !wantRun);
  $("tab-run").classList.toggle("active", wantRun);
  if (wantRun && !runLoaded) {
    runLoaded = true;
    try {
      showRun(await getJSON("/api/run"));
    } catch (error) {
      runLoaded = false;
      showError($("run-error"), error.message, "The run's results cannot be shown");
    }
  }
}

// ---- start --------------------------------------------------------------------------------

async function start() {
  try {
    state.info = await getJSON("/api/info");
  } catch (error) {
    showError($("error"), `the server does not answer: ${error.message}`, "No connection");
    return;
  }
  const select = $("model");
  select.replaceChildren(...state.info.models.map((m) => el("option", { value: m.id, text: m.id, title: m.path })));
  const describe = () => { $("model-meta").textContent = describeModel(selectedModel()); };
  select.addEventListener("change", describe);
  describe();
  $("limit").textContent = megabytes(state.info.max_upload_bytes);
  $("tab-run").hidden = !state.info.run;

  const drop = $("drop");
  const input = $("file");
  $("choose").addEventListener("click", (event) => { event.stopPropagation(); input.click(); });
  drop.addEventListener("click", () => input.click());
  input.addEventListener("change", () => { upload(input.files[0]); input.value = ""; });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) upload(file);
  });
  $("record").addEventListener("click", (event) => { event.stopPropagation(); startRecording(); });
  $("rec-stop").addEventListener("click", () => stopRecording(true));
  $("rec-cancel").addEventListener("click", () => stopRecording(false));
  window.addEventListener("hashchange", showView);
  showView();
}

document.addEventListener("DOMContentLoaded", start);
