// styletalk-live presenter page: websocket control (protocol v1, see streaming/PROTOCOL.md) + WebRTC media.
// No build step and no third-party code: plain ES module, served by the same port as the websocket.

const PROTOCOL = 1;
const $ = (id) => document.getElementById(id);

// Everything the page knows, also exposed as window.styletalk so tests (and curious users) can read it.
const state = {
  ws: null,
  connected: false,
  pc: null,
  mic: null,
  pending: new Map(), // id -> {resolve, reject, type}
  nextId: 1,
  styles: [],
  currentStyle: null,
  paused: false,
  acks: [], // successful set_style replies, newest last
  errors: [], // error replies and error events, newest last
  framesPresented: 0, // counted with requestVideoFrameCallback
  rxFps: 0,
  lastStats: null,
  recording: null, // "Record my style": {phase, seconds, bytes, progress, style, error}
};
window.styletalk = state;

// ------------------------------------------------------------------------------------------------ messages
function log(text, kind = "info") {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  const list = $("log");
  list.prepend(item);
  while (list.children.length > 30) list.lastChild.remove();
}

function setConn(text, kind) {
  const badge = $("conn");
  badge.textContent = text;
  badge.dataset.state = kind;
}

function wsUrl() {
  const token = new URLSearchParams(location.search).get("token");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws` + (token ? `?token=${encodeURIComponent(token)}` : "");
}

function connect() {
  const ws = new WebSocket(wsUrl());
  state.ws = ws;
  setConn("connecting…", "connecting");
  ws.onopen = () => {
    state.connected = true;
    setConn("connected", "ok");
  };
  ws.onmessage = (ev) => onMessage(ev.data);
  ws.onclose = (ev) => {
    state.connected = false;
    for (const { reject } of state.pending.values()) reject({ code: "closed", message: "connection closed" });
    state.pending.clear();
    stopMedia();
    updateButtons();
    const why = ev.reason ? ` (${ev.reason})` : ev.code === 1006 ? " (refused: wrong token or server down?)" : "";
    setConn(`disconnected${why}`, "error");
    log(`connection closed: code ${ev.code}${why}`, "error");
  };
}

function onMessage(text) {
  let msg;
  try {
    msg = JSON.parse(text);
  } catch {
    log("unreadable message from server", "error");
    return;
  }
  if (msg.type === "event") return onEvent(msg);
  const waiter = msg.id != null ? state.pending.get(msg.id) : undefined;
  if (waiter) state.pending.delete(msg.id);
  if (msg.type === "result") {
    waiter?.resolve(msg.result);
  } else if (msg.type === "error") {
    state.errors.push(msg);
    if (waiter) waiter.reject(msg);
    else log(`error ${msg.code}: ${msg.message}`, "error");
  }
}

function onEvent(msg) {
  switch (msg.event) {
    case "welcome":
      state.session = msg.session;
      showStyles(msg.styles || []);
      updateButtons();
      log(`session ${msg.session} ready`);
      request("list_styles")
        .then((r) => {
          state.currentStyle = r.current;
          showStyles(r.styles);
          if (typeof r.intensity === "number") {
            $("intensity").value = String(r.intensity);
            $("intensity-value").textContent = r.intensity.toFixed(2);
          }
        })
        .catch(() => {});
      break;
    case "error":
      state.errors.push(msg);
      if (msg.data) log(`engine error ${msg.data.code || ""}: ${msg.data.message || ""}`, "error");
      else log(`server error ${msg.code || ""}: ${msg.message || ""}`, "error");
      break;
    case "info":
    case "warning": {
      const d = msg.data || {};
      const details = Object.entries(d)
        .filter(([k]) => !["type", "code", "session"].includes(k))
        .map(([k, v]) => `${k}=${typeof v === "number" ? Math.round(v * 100) / 100 : v}`)
        .join(" ");
      log(`${d.code || msg.event} ${details}`, msg.event === "warning" ? "error" : "info");
      break;
    }
    case "style_progress":
      if (state.recording) state.recording.progress = { frames: msg.frames, total: msg.total };
      recordStatus(`extracting your style… ${msg.frames}${msg.total ? ` / ${msg.total}` : ""} frames`);
      break;
    case "media_ended":
      log(`media ended: ${msg.reason}`, "error");
      stopMedia();
      updateButtons();
      break;
    default:
      log(`${msg.event}: ${JSON.stringify(msg.data ?? msg)}`);
  }
}

// Send one request; resolves with its result, rejects with the error reply {code, message}.
function request(type, fields = {}) {
  if (!state.connected) return Promise.reject({ code: "closed", message: "not connected" });
  const id = state.nextId++;
  return new Promise((resolve, reject) => {
    state.pending.set(id, { resolve, reject, type });
    state.ws.send(JSON.stringify({ v: PROTOCOL, id, type, ...fields }));
  });
}
state.request = request;

// ---------------------------------------------------------------------------------------------------- media
// Receiver hints (URL parameters; benchmarks/browser_e2e.py --hint measures each against the defaults):
//   ?jitter=MS (both receivers), ?jitter_video=MS, ?jitter_audio=MS: RTCRtpReceiver.jitterBufferTarget
//     ("auto" = the browser's own choice);  ?sync=0: audio and video in separate streams (not lip-synced);
//   ?codec=h264: offer H.264 first (the server then encodes with libx264, tune zerolatency; default VP8).
// Defaults: the browser's choice, synchronised. Measured in Chromium, a target only raises the jitter buffer's
// floor (0 is its default: the adaptive target is unchanged), and without sync the mouth runs ahead of the
// voice by the audio buffer (-175 ms seen), so neither shortens the wait without breaking lip sync; what the
// browser adds is its answer to jittery arrival (see the benchmark's jitter-buffer figures).
const HINT_DEFAULTS = { video: null, audio: null };

function receiverHints() {
  const q = new URLSearchParams(location.search);
  const ms = (key, fallback) => {
    const v = q.get(key);
    if (v === null) return fallback;
    if (v === "auto") return null;
    const n = Number(v);
    return Number.isFinite(n) && n >= 0 ? Math.min(n, 4000) : fallback;
  };
  const both = ms("jitter", undefined);
  return {
    video: ms("jitter_video", both === undefined ? HINT_DEFAULTS.video : both),
    audio: ms("jitter_audio", both === undefined ? HINT_DEFAULTS.audio : both),
    sync: q.get("sync") !== "0",
    codec: q.get("codec"), // e.g. "h264": offer that video codec first (the server encodes what comes first)
  };
}

function preferCodec(transceiver, name) {
  if (!name || !transceiver.setCodecPreferences || !RTCRtpReceiver.getCapabilities) return;
  const codecs = RTCRtpReceiver.getCapabilities("video")?.codecs || [];
  const wanted = `video/${name}`.toLowerCase();
  const first = codecs.filter((c) => c.mimeType.toLowerCase() === wanted);
  if (first.length) transceiver.setCodecPreferences([...first, ...codecs.filter((c) => !first.includes(c))]);
}

function applyHint(receiver, hints) {
  const target = hints[receiver.track.kind];
  if (target == null) return;
  if ("jitterBufferTarget" in receiver) receiver.jitterBufferTarget = target;
  else if ("playoutDelayHint" in receiver) receiver.playoutDelayHint = target / 1000; // older Chromium
}

// The answer with the audio in a media stream of its own: browsers synchronise only tracks of one stream.
function unsyncAudio(sdp) {
  return sdp
    .split(/\r\n(?=m=)/)
    .map((section) => (section.startsWith("m=audio") ? section.replace(/msid:(\S+) /g, "msid:$1-audio ") : section))
    .join("\r\n");
}

function iceGatheringDone(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => pc.iceGatheringState === "complete" && done();
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, timeoutMs); // host candidates are enough on a LAN; do not wait for slow STUN
  });
}

async function start() {
  $("start").disabled = true;
  try {
    state.mic = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      video: false,
    });
  } catch (err) {
    log(`microphone not available: ${err.message || err}`, "error");
    updateButtons();
    return;
  }
  const pc = new RTCPeerConnection({ iceServers: [] });
  state.pc = pc;
  const hints = (state.hints = receiverHints());
  for (const track of state.mic.getAudioTracks()) pc.addTrack(track, state.mic);
  const videoTransceiver = pc.addTransceiver("video", { direction: "recvonly" });
  preferCodec(videoTransceiver, hints.codec);
  pc.ontrack = (ev) => {
    applyHint(ev.receiver, hints);
    const video = $("avatar");
    if (!video.srcObject) video.srcObject = new MediaStream();
    video.srcObject.addTrack(ev.track);
    $("placeholder").hidden = true;
  };
  pc.onconnectionstatechange = () => {
    log(`media ${pc.connectionState}`, pc.connectionState === "failed" ? "error" : "info");
  };
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc, 2000);
    const answer = await request("offer", { sdp: pc.localDescription.sdp });
    await pc.setRemoteDescription({ type: "answer", sdp: hints.sync ? answer.sdp : unsyncAudio(answer.sdp) });
    watchFrames();
    log("media started");
  } catch (err) {
    log(`could not start: ${err.code || ""} ${err.message || err}`, "error");
    stopMedia();
  }
  updateButtons();
}

function stopMedia() {
  if (state.pc) state.pc.close();
  state.pc = null;
  if (state.mic) for (const t of state.mic.getTracks()) t.stop();
  state.mic = null;
  const video = $("avatar");
  video.srcObject = null;
  $("placeholder").hidden = false;
  showStages(null); // figures of a stopped stream would only mislead
  $("dropped").textContent = "–";
  $("latency").textContent = "–";
  $("av-offset").textContent = "–";
  $("tx-fps").textContent = "–";
}

async function stop() {
  stopMedia();
  updateButtons();
  try {
    await request("hangup");
    log("media stopped");
  } catch (err) {
    log(`hangup: ${err.message}`, "error");
  }
}

function watchFrames() {
  const video = $("avatar");
  if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
  const tick = () => {
    state.framesPresented += 1;
    if (state.pc) video.requestVideoFrameCallback(tick);
  };
  video.requestVideoFrameCallback(tick);
}

// Grey levels of a rectangle of the current video frame, as fractions of the frame (test hook, analysis).
state.grabRegion = (x0, y0, x1, y1, step = 2) => {
  const video = $("avatar");
  const w = video.videoWidth;
  const h = video.videoHeight;
  if (!w || !h) return null;
  const canvas = state._canvas || (state._canvas = document.createElement("canvas"));
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(video, 0, 0, w, h);
  const rx = Math.floor(x0 * w);
  const ry = Math.floor(y0 * h);
  const rw = Math.max(1, Math.floor((x1 - x0) * w));
  const rh = Math.max(1, Math.floor((y1 - y0) * h));
  const px = ctx.getImageData(rx, ry, rw, rh).data;
  const out = [];
  for (let y = 0; y < rh; y += step) {
    for (let x = 0; x < rw; x += step) {
      const i = 4 * (y * rw + x);
      out.push(Math.round(0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2]));
    }
  }
  return { width: w, height: h, values: out };
};

// Sample a region every `intervalMs` for `seconds` (analysis/test hook): resolves to an array of grey arrays.
state.sampleRegion = (box, seconds, intervalMs = 50) =>
  new Promise((resolve) => {
    const samples = [];
    const end = performance.now() + 1000 * seconds;
    const timer = setInterval(() => {
      const region = state.grabRegion(box[0], box[1], box[2], box[3]);
      if (region) samples.push(region.values);
      if (performance.now() >= end) {
        clearInterval(timer);
        resolve(samples);
      }
    }, intervalMs);
  });

// ---------------------------------------------------------------------------------------------------- styles
function showStyles(names) {
  state.styles = names;
  const box = $("styles");
  box.replaceChildren();
  for (const name of names) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = name; // textContent, never innerHTML: names can come from uploads
    b.dataset.style = name;
    b.setAttribute("aria-pressed", String(name === state.currentStyle));
    b.onclick = () => setStyle(name);
    box.append(b);
  }
}

async function setStyle(name) {
  const sent = performance.now();
  try {
    const r = await request("set_style", { name, transition_ms: 250 });
    state.currentStyle = r.style;
    state.acks.push({ ...r, rttMs: performance.now() - sent });
    for (const b of $("styles").children) b.setAttribute("aria-pressed", String(b.dataset.style === r.style));
    $("ack").textContent = `style “${r.style}” from frame ${r.frame}`;
  } catch (err) {
    $("ack").textContent = `style change refused: ${err.message}`;
  }
}

let intensityTimer = null;
function onIntensity() {
  const value = Number($("intensity").value);
  $("intensity-value").textContent = value.toFixed(2);
  clearTimeout(intensityTimer); // coalesce slider drags into one request per 100 ms
  intensityTimer = setTimeout(() => {
    request("set_intensity", { value }).catch((err) => log(`intensity: ${err.message}`, "error"));
  }, 100);
}

function readFileBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function uploadStyle(ev) {
  ev.preventDefault();
  const file = $("style-file").files[0];
  const name = $("style-name").value.trim();
  if (!file || !name) return;
  const ext = file.name.toLowerCase().split(".").pop();
  const format = ["mat", "mp4", "webm"].includes(ext) ? ext : "npy";
  try {
    const r = await request("upload_style", { name, format, data: await readFileBase64(file) });
    showStyles(r.styles);
    log(`style “${r.style}” added (${r.frames} frames)`);
  } catch (err) {
    log(`style upload refused: ${err.code}: ${err.message}`, "error");
  }
}

// "Record my style": a few seconds from the webcam (MediaRecorder, webm), uploaded as upload_style; the server
// extracts the style off its real-time path and reports progress (style_progress events).
const RECORD_SECONDS = 6;

function recordStatus(text) {
  $("record-status").textContent = text;
}

function recordedName() {
  let name = "my style";
  for (let k = 2; state.styles.includes(name); k++) name = `my style ${k}`;
  return name;
}

async function recordStyle() {
  const button = $("record-style");
  button.disabled = true;
  const rec = (state.recording = { phase: "starting", seconds: RECORD_SECONDS, bytes: 0 });
  let camera = null;
  try {
    camera = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    $("record-preview").srcObject = camera;
    $("record-preview").classList.add("live");
    const mimeType = ["video/webm;codecs=vp8", "video/webm"].find((t) => MediaRecorder.isTypeSupported(t));
    const recorder = new MediaRecorder(camera, mimeType ? { mimeType } : {});
    const chunks = [];
    recorder.ondataavailable = (e) => e.data.size && chunks.push(e.data);
    const stopped = new Promise((resolve) => (recorder.onstop = resolve));
    recorder.start(500);
    rec.phase = "recording";
    for (let left = RECORD_SECONDS; left > 0; left--) {
      recordStatus(`recording… ${left} s left: look at the camera and talk as you usually do`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    recorder.stop();
    await stopped;
    const blob = new Blob(chunks, { type: "video/webm" });
    rec.bytes = blob.size;
    rec.phase = "uploading";
    recordStatus(`uploading ${Math.round(blob.size / 1024)} KiB…`);
    const r = await request("upload_style", { name: recordedName(), format: "webm", data: await readFileBase64(blob) });
    showStyles(r.styles);
    rec.phase = "done";
    rec.style = r.style;
    rec.frames = r.frames; // the clip on the 30 fps grid (the progress events count decoded, throttled frames)
    recordStatus(`style “${r.style}” ready (${r.frames} frames): pick it above`);
    log(`recorded style “${r.style}” added (${r.frames} frames)`);
  } catch (err) {
    rec.phase = "failed";
    rec.error = err.code || err.name || "error";
    recordStatus(`no style: ${err.message || err}`);
    log(`record my style: ${err.code || err.name}: ${err.message}`, "error");
  } finally {
    camera?.getTracks().forEach((t) => t.stop());
    $("record-preview").srcObject = null;
    $("record-preview").classList.remove("live");
    button.disabled = !state.connected;
  }
}

async function uploadAvatar(ev) {
  ev.preventDefault();
  const file = $("avatar-file").files[0];
  if (!file) return;
  const format = file.type === "image/png" ? "png" : "jpeg";
  try {
    const r = await request("set_avatar", { format, data: await readFileBase64(file) });
    log(`avatar set (${r.width}×${r.height})`);
  } catch (err) {
    log(`avatar refused: ${err.code}: ${err.message}`, "error");
  }
}

// ----------------------------------------------------------------------------------------------------- stats
function ms(x) {
  return typeof x === "number" ? `${x.toFixed(0)} ms` : "–";
}

// Latency figures from the engine's stats: a flat or nested {p50, p95} for the end-to-end stage if present.
function latencyOf(engine) {
  const lat = engine?.latency_ms || engine?.latency || {};
  const total = lat.total || lat.end_to_end || lat.e2e || lat.glass_to_glass;
  if (total && typeof total === "object") return [total.p50, total.p95];
  return [engine?.latency_p50_ms, engine?.latency_p95_ms];
}

// Dropped frames with their share of all frames due, so a count in the hundreds reads as what it is.
function showDropped(engine) {
  const dropped = engine.dropped_frames;
  if (!state.pc || typeof dropped !== "number") {
    $("dropped").textContent = "–";
    return;
  }
  const due = dropped + (engine.frames_sent ?? 0);
  const share = due > 0 ? (100 * dropped) / due : 0;
  $("dropped").textContent = `${dropped} (${share.toFixed(share < 10 ? 1 : 0)} % of ${due})`;
}

// Per-stage latency (ms since the audio arrived) as a small table, rounded; empty when there is no media.
function showStages(latency) {
  const body = $("stages").tBodies[0];
  body.replaceChildren();
  if (!latency) return;
  for (const [stage, v] of Object.entries(latency)) {
    if (!v || (v.p50 == null && v.p95 == null)) continue;
    const row = body.insertRow();
    for (const text of [stage, ms(v.p50), ms(v.p95)]) row.insertCell().textContent = text;
  }
}

async function pollStats() {
  if (!state.connected) return;
  let prevDecoded = state._prevDecoded;
  if (state.pc) {
    const report = await state.pc.getStats();
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        const now = performance.now();
        if (prevDecoded) state.rxFps = ((s.framesDecoded - prevDecoded.n) * 1000) / (now - prevDecoded.t);
        prevDecoded = { n: s.framesDecoded, t: now };
        state.framesDecoded = s.framesDecoded;
      }
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime != null) {
        $("rtt").textContent = ms(1000 * s.currentRoundTripTime);
      }
    });
  }
  state._prevDecoded = state.pc ? prevDecoded : null;
  $("rx-fps").textContent = state.pc ? state.rxFps.toFixed(1) : "–";
  try {
    const stats = await request("stats");
    state.lastStats = stats;
    const engine = stats.engine || {};
    const tx = stats.transport?.video_send_fps ?? engine.fps;
    $("tx-fps").textContent = typeof tx === "number" ? tx.toFixed(1) : "–";
    const [p50, p95] = latencyOf(engine);
    $("latency").textContent = p50 != null ? `${ms(p50)} / ${ms(p95)}` : "–";
    const av = engine.av_offset_ms ?? engine.av_offset;
    const avValue = av && typeof av === "object" ? av.p50 : av;
    $("av-offset").textContent = typeof avValue === "number" ? ms(avValue) : "–";
    showDropped(engine);
    showStages(state.pc ? engine.latency_ms : null);
  } catch {
    /* a missed stats reply is not worth a log line */
  }
}

// -------------------------------------------------------------------------------------------------- controls
function updateButtons() {
  const live = state.pc !== null;
  $("start").disabled = !state.connected || live;
  $("stop").disabled = !live;
  $("interrupt").disabled = !live;
  $("pause").disabled = !live;
  const recording = state.recording && !["done", "failed"].includes(state.recording.phase);
  $("record-style").disabled = !state.connected || Boolean(recording);
}

async function togglePause() {
  const type = state.paused ? "resume" : "pause";
  try {
    await request(type);
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    $("pause").setAttribute("aria-pressed", String(state.paused));
  } catch (err) {
    log(`${type}: ${err.message}`, "error");
  }
}

function init() {
  $("start").onclick = start;
  $("stop").onclick = stop;
  $("interrupt").onclick = () => request("interrupt").catch((e) => log(`interrupt: ${e.message}`, "error"));
  $("pause").onclick = togglePause;
  $("hear").onchange = () => {
    $("avatar").muted = !$("hear").checked;
  };
  $("intensity").oninput = onIntensity;
  $("upload-style").onsubmit = uploadStyle;
  $("record-style").onclick = recordStyle;
  $("upload-avatar").onsubmit = uploadAvatar;
  connect();
  setInterval(pollStats, 1000);
}

init();
