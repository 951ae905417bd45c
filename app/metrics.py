"""Prometheus metrics for one app instance (`GET /metrics`).

Each `Metrics` owns its own `CollectorRegistry`, so two apps in one process (tests, the
benchmark) never share counters and nothing touches prometheus-client's global registry.
Sources are labelled `sip`, `twilio` or `stream`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets in seconds: fine around the 0.2-1.5 s range the targets care about.
_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The service's metrics, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_sessions = Gauge(
            "hearsay_active_sessions", "Calls and streaming sessions in progress", ["source"], registry=r)
        self.calls = Counter("hearsay_calls", "Calls and sessions started", ["source"], registry=r)
        self.audio_seconds = Counter(
            "hearsay_audio_seconds", "Seconds of audio received", ["source"], registry=r)
        self.utterances = Counter(
            "hearsay_utterances", "Final utterances recognised", ["source"], registry=r)
        self.dropped_frames = Counter(
            "hearsay_dropped_frames", "Audio payloads refused because the engine was behind",
            ["source"], registry=r)
        self.vad_latency = Histogram(
            "hearsay_vad_latency_seconds",
            "From the arrival of an utterance's last audio to its final result, less recognizer "
            "compute (silence the VAD waits for, queueing)",
            registry=r, buckets=_LATENCY_BUCKETS)
        self.asr_latency = Histogram(
            "hearsay_asr_latency_seconds", "Recognizer compute per final utterance",
            registry=r, buckets=_LATENCY_BUCKETS)
        self.end_to_end_latency = Histogram(
            "hearsay_end_to_end_latency_seconds",
            "From the arrival of an utterance's last audio to its final event in the outbox",
            ["source"], registry=r, buckets=_LATENCY_BUCKETS)
        self.webhook_deliveries = Counter(
            "hearsay_webhook_deliveries", "Webhook delivery attempts by outcome", ["outcome"], registry=r)
        self.outbox_depth = Gauge(
            "hearsay_outbox_depth", "Events in the outbox waiting for delivery", registry=r)
        self.refused_busy = Counter(
            "hearsay_refused_busy", "Calls refused as busy ([asr] max_live_calls live, or the engine behind: "
            "[asr] busy_late_ms)", ["source"], registry=r)
        self.final_lateness = Histogram(
            "hearsay_final_lateness_seconds", "From the arrival of the audio at which the engine ended an "
            "utterance (its turn's silence wait over) to its final result: the engine's own delay",
            registry=r, buckets=_LATENCY_BUCKETS)
        self.recent_lateness = Gauge(
            "hearsay_recent_lateness_seconds", "The 90th percentile of the finals' lateness over the last 10 s "
            "(new calls are refused as busy above [asr] busy_late_ms)", registry=r)
        self.learned_call_limit = Gauge(
            "hearsay_learned_call_limit", "Live calls let in: first as the machine's speed suggests, then as "
            "many as it was found to hear in time (calls.lateness; 0: no such limit)", registry=r)
        self.sip_worker_up = Gauge(
            "hearsay_sip_worker_up", "1 while the SIP worker serves, 0 while it is down or starting",
            ["worker"], registry=r)
        self.sip_worker_calls = Gauge(
            "hearsay_sip_worker_calls", "Calls the SIP worker carries", ["worker"], registry=r)
        self.sip_worker_restarts = Counter(
            "hearsay_sip_worker_restarts", "Times the SIP worker was started again after it exited",
            ["worker"], registry=r)
        self.sip_bridge_latency = Histogram(
            "hearsay_sip_bridge_latency_seconds",
            "From a caller's frame leaving pjsua2 in its worker to its arrival in the service",
            registry=r, buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25))
        self.stream_errors = Counter(
            "hearsay_stream_errors", "Error messages sent to /v1/stream clients", ["code"], registry=r)

        # One series per live call and figure (removed when the call ends): app.pipeline.quality.
        self.call_quality = Gauge(
            "hearsay_call_quality", "A live call's audio-quality figures (docs/quality.md)",
            ["call_id", "source", "figure"], registry=r)
        self.quality_warnings = Counter(
            "hearsay_quality_warnings", "Audio-quality warnings given", ["source", "kind"], registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
