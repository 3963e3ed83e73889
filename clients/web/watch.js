// styletalk-live viewer page (/watch/<room>?t=<token>): watch a room over /ws/watch (protocol v1, see
// streaming/PROTOCOL.md). View-only: no microphone. With the room's control token the page also shows the
// operator controls (style, intensity, interrupt). The server (or Janus, behind it) makes the WebRTC offer.
const $ = (id) => document.getElementById(id);
const room = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
const token = new URLSearchParams(location.search).get("t") || "";
const state = { room, role: null, mode: null, roomState: null, states: [], framesPresented: 0, errors: [] };
window.styletalkWatch = state;

let ws = null;
let pc = null;
let nextId = 1;
const pending = new Map();

function request(type, fields = {}) {
  const id = nextId++;
  ws.send(JSON.stringify({ v: 1, id, type, ...fields }));
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
}

function show(text) {
  $("state").textContent = text;
}

async function watch() {
  if (pc) pc.close();
  let r;
  try {
    r = await request("watch", { room, token });
  } catch (e) {
    state.errors.push(e.code);
    show(e.code === "unknown_room" ? "no such room (closed?)" : e.code === "bad_token" ? "wrong link" : e.message);
    return;
  }
  state.role = r.role;
  state.mode = r.mode;
  pc = new RTCPeerConnection();
  state.pc = pc;
  pc.ontrack = (ev) => {
    const video = $("avatar");
    if (!video.srcObject) video.srcObject = new MediaStream();
    video.srcObject.addTrack(ev.track);
  };
  $("avatar").srcObject = null;
  await pc.setRemoteDescription({ type: "offer", sdp: r.sdp });
  await pc.setLocalDescription(await pc.createAnswer());
  await new Promise((resolve) => {  // all candidates in the answer (no trickle towards Janus)
    if (pc.iceGatheringState === "complete") return resolve();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && resolve();
    setTimeout(resolve, 2000);
  });
  await request("answer", { sdp: pc.localDescription.sdp });
  show(`${r.state} · ${r.role} · ${r.mode}`);
  if (r.role === "operator") operatorControls();
}

async function operatorControls() {
  $("operator").hidden = false;
  const r = await request("list_styles");
  const box = $("styles");
  box.replaceChildren();
  for (const name of r.styles) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = name;
    b.dataset.style = name;
    b.onclick = () => request("set_style", { name, transition_ms: 250 });
    box.append(b);
  }
  $("intensity").onchange = (e) => request("set_intensity", { value: Number(e.target.value) });
  $("interrupt").onclick = () => request("interrupt");
}

function onMessage(msg) {
  if (msg.type === "event") {
    if (msg.event === "room_state") {
      const previous = state.roomState;
      state.roomState = msg.state;
      state.states.push(msg.state);
      show(msg.state === "fanout_down" ? "the stream is interrupted; reconnecting…" : msg.state);
      if (msg.state === "ended" || (["live", "waiting"].includes(msg.state) && ["fanout_down", "ended"].includes(previous)))
        watch().catch((e) => state.errors.push(e.code || e.message));
    }
    return;
  }
  const p = pending.get(msg.id);
  if (!p) return;
  pending.delete(msg.id);
  if (msg.type === "error") p.reject(Object.assign(new Error(msg.message), { code: msg.code }));
  else p.resolve(msg.result);
}

function countFrames() {
  const video = $("avatar");
  const tick = () => {
    state.framesPresented += 1;
    video.requestVideoFrameCallback(tick);
  };
  video.requestVideoFrameCallback(tick);
}

// Grey levels of a box of the video (fractions of its size) every intervalMs for `seconds` (test hook).
state.sampleRegion = (box, seconds, intervalMs = 50) =>
  new Promise((resolve) => {
    const video = $("avatar");
    const canvas = document.createElement("canvas");
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    const samples = [];
    const end = performance.now() + 1000 * seconds;
    const timer = setInterval(() => {
      const w = video.videoWidth, h = video.videoHeight;
      if (w && h) {
        const x = Math.floor(box[0] * w), y = Math.floor(box[1] * h);
        const rw = Math.max(1, Math.floor((box[2] - box[0]) * w)), rh = Math.max(1, Math.floor((box[3] - box[1]) * h));
        canvas.width = rw;
        canvas.height = rh;
        ctx.drawImage(video, x, y, rw, rh, 0, 0, rw, rh);
        const px = ctx.getImageData(0, 0, rw, rh).data, out = [];
        for (let i = 0; i < px.length; i += 4) out.push(Math.round(0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2]));
        samples.push(out);
      }
      if (performance.now() >= end) {
        clearInterval(timer);
        resolve(samples);
      }
    }, intervalMs);
  });

$("unmute").onclick = () => {
  $("avatar").muted = false;
};
countFrames();
ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/watch`);
ws.onopen = () => {
  $("conn").dataset.state = "open";
  $("conn").textContent = "connected";
};
ws.onclose = () => {
  $("conn").dataset.state = "closed";
  $("conn").textContent = "disconnected";
};
ws.onmessage = (ev) => {
  const msg = JSON.parse(ev.data);
  if (msg.event === "welcome") return watch().catch((e) => {
    state.errors.push(e.code || e.message);
    show(`could not watch: ${e.message}`);
  });
  onMessage(msg);
};
