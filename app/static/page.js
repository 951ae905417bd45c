// The live-caption page: microphone -> MediaRecorder (WebM/Opus, 250 ms chunks) -> /v1/stream.
import { Hearsay } from "/static/hearsay.js";

const $ = (id) => document.getElementById(id);
const apiKey = new URLSearchParams(location.search).get("api_key") ?? "";
const client = new Hearsay({ url: location.origin, apiKey });
let session = null;
let recorder = null;
let microphone = null;

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function setRecording(on) {
  $("start").disabled = on;
  $("stop").disabled = !on;
  $("recording").hidden = !on;
}

function figure(value, unit, digits = 0) {
  return value === null || value === undefined ? "–" : `${value.toFixed(digits)}${unit}`;
}

function showWarning(warning) {
  const item = document.createElement("li");
  item.dataset.kind = warning.kind;
  item.textContent = warning.message;
  $("warnings").prepend(item);
  while ($("warnings").children.length > 3) $("warnings").lastChild.remove();
}

async function start() {
  showError("");
  $("final").textContent = "";
  $("partial").textContent = "";
  $("warnings").replaceChildren();
  try {
    microphone = await navigator.mediaDevices.getUserMedia({
      // Automatic gain control off: it would lift a quiet microphone and hide it from the
      // quality meter, whose point is to tell the speaker when their audio is the problem.
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: false },
    });
  } catch (err) {
    showError(`The microphone is not available: ${err.message}`);
    return;
  }
  try {
    session = await client.streaming.createSession({ encoding: "WEBM_OPUS", interimResults: true });
  } catch (err) {
    microphone.getTracks().forEach((t) => t.stop());
    showError(`Cannot start captions: ${err.message}`);
    return;
  }
  session.onResult((result) => {
    if (result.isFinal) {
      $("final").textContent = `${$("final").textContent} ${result.transcript}`.trim();
      $("partial").textContent = "";
    } else {
      $("partial").textContent = result.transcript;
    }
  });
  session.onAudioAnalysis((a) => {
    $("level").value = Math.max(-70, a.levelDbfs);
    $("level-text").textContent = figure(a.levelDbfs, " dBFS");
    $("noise").textContent = figure(a.noiseFloorDbfs, " dBFS");
    $("snr").textContent = figure(a.snrDb, " dB");
    $("clipping").textContent = figure(a.clippingRatio * 100, " %", 1);
  });
  session.onSpeechAnalysis((s) => {
    $("rate").textContent = figure(s.speechRateWpm, " words/min");
    $("confidence").textContent = figure(s.confidence, "", 2);
  });
  session.on("quality_warning", showWarning);
  session.on("error", (err) => showError(`${err.message} (${err.code})`));
  session.on("close", () => stop());

  recorder = new MediaRecorder(microphone, { mimeType: "audio/webm;codecs=opus" });
  recorder.ondataavailable = (event) => {
    if (event.data.size && session && !session.closed) session.sendAudio(event.data);
  };
  recorder.start(250);
  setRecording(true);
}

async function stop() {
  const [rec, sess, mic] = [recorder, session, microphone];
  recorder = session = microphone = null;
  setRecording(false);
  if (rec && rec.state !== "inactive") {
    const stopped = new Promise((resolve) => rec.addEventListener("stop", resolve, { once: true }));
    rec.stop(); // its last chunk comes before "stop"
    await stopped;
  }
  mic?.getTracks().forEach((t) => t.stop());
  if (sess && !sess.closed) {
    try {
      await sess.finalize();
    } catch (err) {
      showError(err.message);
    }
    sess.close();
  }
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
