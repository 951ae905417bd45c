// hearsay.js: a small browser (and Node) client for Hearsay's /v1/stream, an ES module with
// no dependencies. Its API mirrors the Python SDK (client/, docs/sdk.md):
//
//   import { Hearsay } from "/static/hearsay.js";
//   const client = new Hearsay({ url: location.origin, apiKey: "" });
//   const session = await client.streaming.createSession({ encoding: "WEBM_OPUS", interimResults: true });
//   session.onResult((r) => ...);            // {transcript, isFinal, confidence, ...}
//   session.onAudioAnalysis((a) => ...);     // {levelDbfs, noiseFloorDbfs, snrDb, clippingRatio}
//   session.onSpeechAnalysis((s) => ...);    // {speechRatio, speechRateWpm, confidence, latencySeconds}
//   session.on("quality_warning", (w) => ...);   // {kind, value, threshold, message}
//   session.sendAudio(blobOrBuffer);
//   const done = await session.finalize();   // the transcription_complete result
//   session.close();
//
// Events for session.on(): "result", "audio_analysis", "speech_analysis", "quality",
// "quality_warning", "error" (the server's {code, message}), "complete", "close".

export class HearsayError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "HearsayError";
    this.code = code;
  }
}

export class Hearsay {
  constructor({ url = globalThis.location?.origin ?? "http://127.0.0.1:8080", apiKey = "" } = {}) {
    this.url = url.replace(/\/$/, "");
    this.apiKey = apiKey;
    this.streaming = new Streaming(this);
  }

  _wsUrl(path) {
    const base = this.url.replace(/^http/, "ws");
    const key = this.apiKey ? `?api_key=${encodeURIComponent(this.apiKey)}` : "";
    return `${base}${path}${key}`;
  }
}

class Streaming {
  constructor(client) {
    this._client = client;
  }

  /** Open a /v1/stream session; resolves once the server has started it. */
  async createSession(config = {}) {
    const session = new StreamingSession(new WebSocket(this._client._wsUrl("/v1/stream")));
    await session._start(config);
    return session;
  }
}

export class StreamingSession {
  constructor(ws) {
    this._ws = ws;
    this._ws.binaryType = "arraybuffer";
    this._handlers = new Map();
    this.sessionId = null;
    this.closed = false;
    this._complete = new Promise((resolve, reject) => {
      this._resolveComplete = resolve;
      this._rejectComplete = reject;
    });
    this._complete.catch(() => {}); // a session nobody finalizes is not an unhandled rejection
  }

  on(event, callback) {
    if (!this._handlers.has(event)) this._handlers.set(event, []);
    this._handlers.get(event).push(callback);
    return () => this._handlers.set(event, this._handlers.get(event).filter((c) => c !== callback));
  }

  onResult(callback) { return this.on("result", callback); }
  onAudioAnalysis(callback) { return this.on("audio_analysis", callback); }
  onSpeechAnalysis(callback) { return this.on("speech_analysis", callback); }

  /** Audio bytes in the session's encoding: a Blob (MediaRecorder), ArrayBuffer or typed array. */
  sendAudio(data) {
    if (this.closed) throw new HearsayError("closed", "the session is closed");
    this._ws.send(data);
  }

  /** No more audio: resolves with the transcription_complete result ({text, segments, duration}). */
  async finalize() {
    if (!this.closed && this._ws.readyState === WebSocket.OPEN) {
      this._ws.send(JSON.stringify({ type: "stop_transcription" }));
    }
    return this._complete;
  }

  close() {
    this.closed = true;
    if (this._ws.readyState <= WebSocket.OPEN) this._ws.close(1000);
  }

  _emit(event, value) {
    for (const callback of this._handlers.get(event) ?? []) {
      try {
        callback(value);
      } catch (err) {
        console.error(`hearsay: a ${event} handler failed`, err);
      }
    }
  }

  _start(config) {
    return new Promise((resolve, reject) => {
      this._ws.onopen = () => this._ws.send(JSON.stringify({ type: "start_transcription", config }));
      this._ws.onerror = () => reject(new HearsayError("connection", "cannot reach the Hearsay server"));
      this._ws.onclose = (event) => {
        this.closed = true;
        reject(new HearsayError("closed", `the server closed the connection (${event.code})`));
        this._rejectComplete(new HearsayError("closed", `the session ended without a result (${event.code})`));
        this._emit("close", event);
      };
      this._ws.onmessage = (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch {
          return;
        }
        if (message.type === "transcription_started") {
          this.sessionId = message.sessionId;
          resolve(this);
        } else if (message.type === "error" && this.sessionId === null) {
          reject(new HearsayError(message.code, message.message));
        }
        this._dispatch(message);
      };
    });
  }

  _dispatch(message) {
    switch (message.type) {
      case "transcription_result":
        this._emit("result", message.result);
        break;
      case "quality": {
        const q = message.quality;
        this._emit("quality", q);
        this._emit("audio_analysis", {
          levelDbfs: q.level_dbfs, noiseFloorDbfs: q.noise_floor_dbfs, snrDb: q.snr_db,
          clippingRatio: q.clipping_ratio,
        });
        this._emit("speech_analysis", {
          speechRatio: q.speech_ratio, speechRateWpm: q.speech_rate_wpm, confidence: q.confidence,
          latencySeconds: q.latency_s,
        });
        break;
      }
      case "quality_warning":
        this._emit("quality_warning", message.warning);
        break;
      case "error":
        this._emit("error", new HearsayError(message.code, message.message));
        break;
      case "transcription_complete":
        this._resolveComplete(message.result);
        this._emit("complete", message.result);
        break;
      default:
        break; // a newer server's message: ignored
    }
  }
}
