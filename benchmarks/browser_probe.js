// Measurement probe injected into the presenter page by benchmarks/browser_e2e.py (page.evaluate, so the page's
// Content-Security-Policy does not apply to it). Everything is timed on the page's own clock
// (performance.now(), the clock of requestVideoFrameCallback), so the benchmark needs no clock alignment.
//
//   window.__probe.begin(box, faceBox)  start: sent-track and remote-audio levels, received frames, getStats
//   window.__probe.snapshot()           getStats figures now (jitter buffers, fps, freezes)
//   window.__probe.collect()            everything recorded so far (then analysed in Python)
(() => {
  const GRID = { mouth: [32, 20], face: [24, 24] }; // grey samples per region (w, h)
  const probe = {
    sent: [], // [t_ms, peak, ts_ms]  local microphone (the track sent to the server), per AudioData block
    remote: [], // [t_ms, peak, ts_ms] the avatar's audio track read through MediaStreamTrackProcessor (the "tap")
    played: [], // [t_ms, timestamp, rtpTimestamp, audioLevel] the audio receiver's synchronization source as it plays
    frames: [], // {t, p, e, r, rtp, n, mouth: [...grey], face: [...grey]} per presented video frame
    clicks: [], // {t, style, ack}
    playout: [], // [t_ms, audio, video] getStats estimatedPlayoutTimestamp (sender NTP ms of the media playing now)
    errors: [],
    running: false,
  };
  window.__probe = probe;

  // Peak |sample| of each audio block of a track, read through MediaStreamTrackProcessor (no worklet module
  // needed, so it works under the page's CSP).
  async function levels(track, out) {
    const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
    while (probe.running) {
      const { value, done } = await reader.read();
      if (done) break;
      const t = performance.now();
      let peak = 0;
      const n = value.numberOfFrames;
      const buf = new Float32Array(n);
      for (let c = 0; c < value.numberOfChannels; c++) {
        value.copyTo(buf, { planeIndex: c, format: "f32-planar" });
        for (let i = 0; i < n; i++) peak = Math.max(peak, Math.abs(buf[i]));
      }
      out.push([t, peak, value.timestamp / 1000]); // [read time, peak, the block's own timestamp] ms
      value.close();
    }
    reader.releaseLock();
  }

  // Chromium's own account of A/V sync: each inbound stream's estimatedPlayoutTimestamp is the sender's NTP time
  // (from its RTCP sender reports) of the media playing out now; audio minus video read from one report is the
  // skew the browser adds, independent of how the probe taps the audio.
  async function playout() {
    while (probe.running) {
      const report = await window.styletalk.pc.getStats();
      const row = { audio: null, video: null };
      report.forEach((s) => {
        if (s.type === "inbound-rtp" && s.estimatedPlayoutTimestamp !== undefined) row[s.kind] = s.estimatedPlayoutTimestamp;
      });
      probe.playout.push([performance.now(), row.audio, row.video]);
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

  // What the listener hears, when: getSynchronizationSources() names the RTP packet whose audio the receiver
  // most recently delivered for playout, when it did so, and its level (the sender's RTP audio-level extension).
  // Polled every few ms, a row per new packet; the tap above reads a copy of the track that runs behind it.
  async function played(receiver) {
    let last = null;
    while (probe.running) {
      for (const s of receiver.getSynchronizationSources()) {
        if (s.rtpTimestamp !== last) {
          last = s.rtpTimestamp;
          probe.played.push([performance.now(), s.timestamp, s.rtpTimestamp, s.audioLevel ?? null]);
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  }

  function greyOf(ctx, video, box, grid) {
    const w = video.videoWidth;
    const h = video.videoHeight;
    const [gw, gh] = grid;
    ctx.drawImage(video, box[0] * w, box[1] * h, (box[2] - box[0]) * w, (box[3] - box[1]) * h, 0, 0, gw, gh);
    const px = ctx.getImageData(0, 0, gw, gh).data;
    const out = new Array(gw * gh);
    for (let i = 0; i < gw * gh; i++) out[i] = Math.round(0.299 * px[4 * i] + 0.587 * px[4 * i + 1] + 0.114 * px[4 * i + 2]);
    return out;
  }

  function watchVideo(video, box, faceBox) {
    const canvas = document.createElement("canvas");
    canvas.width = 64;
    canvas.height = 64;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    const tick = (now, meta) => {
      if (!probe.running) return;
      try {
        probe.frames.push({
          t: now,
          p: meta.presentationTime,
          e: meta.expectedDisplayTime,
          r: meta.receiveTime ?? null,
          c: meta.captureTime ?? null, // the sender's time of the frame (RTCP sender reports), on the page clock
          rtp: meta.rtpTimestamp ?? null,
          n: meta.presentedFrames,
          mouth: greyOf(ctx, video, box, GRID.mouth),
          face: greyOf(ctx, video, faceBox, GRID.face),
        });
      } catch (err) {
        probe.errors.push(String(err));
      }
      video.requestVideoFrameCallback(tick);
    };
    video.requestVideoFrameCallback(tick);
  }

  // Before Start: the RTP timestamp of the first frame the page presents (the server's first frame, a
  // keyframe), so that any frame's engine index = stats.transport.first_video_index + (rtp - firstRtp) / 3000.
  probe.arm = () => {
    const video = document.getElementById("avatar");
    const wait = () => {
      if (!video.srcObject) return setTimeout(wait, 5);
      video.requestVideoFrameCallback((now, meta) => {
        probe.firstRtp = meta.rtpTimestamp ?? null;
      });
    };
    wait();
  };

  probe.begin = (box, faceBox) => {
    const st = window.styletalk;
    const video = document.getElementById("avatar");
    const sentTrack = st.mic.getAudioTracks()[0];
    const remoteTrack = video.srcObject.getAudioTracks()[0];
    probe.running = true;
    probe.t0 = performance.now();
    levels(sentTrack, probe.sent).catch((e) => probe.errors.push(`sent: ${e}`));
    if (remoteTrack) levels(remoteTrack, probe.remote).catch((e) => probe.errors.push(`remote: ${e}`));
    else probe.errors.push("no remote audio track");
    const audioReceiver = st.pc.getReceivers().find((r) => r.track && r.track.kind === "audio");
    if (audioReceiver) played(audioReceiver).catch((e) => probe.errors.push(`played: ${e}`));
    watchVideo(video, box, faceBox);
    playout().catch((e) => probe.errors.push(`playout: ${e}`));
    return true;
  };

  probe.snapshot = async () => {
    const out = { t: performance.now(), video: null, audio: null };
    const report = await window.styletalk.pc.getStats();
    const keys = [
      "framesDecoded", "framesReceived", "framesDropped", "framesPerSecond", "freezeCount", "totalFreezesDuration",
      "pauseCount", "jitterBufferDelay", "jitterBufferTargetDelay", "jitterBufferMinimumDelay",
      "jitterBufferEmittedCount", "totalSamplesReceived", "concealedSamples", "packetsLost", "nackCount",
      "pliCount", "firCount", "keyFramesDecoded", "totalDecodeTime", "totalProcessingDelay", "totalAssemblyTime",
      "framesAssembledFromMultiplePackets", "decoderImplementation", "jitter",
    ];
    report.forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      const row = {};
      for (const k of keys) if (s[k] !== undefined) row[k] = s[k];
      const codec = s.codecId && report.get(s.codecId);
      if (codec) row.codec = codec.mimeType;
      out[s.kind] = row;
    });
    return out;
  };

  probe.stop = () => {
    probe.running = false;
  };

  probe.collect = () => ({
    sent: probe.sent,
    remote: probe.remote,
    played: probe.played,
    timeOrigin: performance.timeOrigin,
    // the server's answer: which RTP header extensions it agreed to (e.g. playout-delay)
    extmaps: (window.styletalk.pc?.remoteDescription?.sdp || "").split("\r\n").filter((l) => l.startsWith("a=extmap")),
    frames: probe.frames,
    clicks: probe.clicks,
    playout: probe.playout,
    firstRtp: probe.firstRtp ?? null,
    firstVideoIndex: window.styletalk.lastStats?.transport?.first_video_index ?? null,
    errors: probe.errors,
    t0: probe.t0,
  });
})();
