"""Prometheus metrics. One registry per app, so several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
UNIT_BUCKETS = tuple(i / 20 for i in range(1, 21))  # 0.05 .. 1.0
ENTROPY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mla_requests_total", "HTTP requests by route and status", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram("mla_request_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("mla_requests_in_flight", "HTTP requests being served", registry=r)
        self.decode = Histogram(
            "mla_decode_seconds", "Decoding time per modality", ["modality"], buckets=FAST_BUCKETS, registry=r
        )
        self.queue = Histogram(
            "mla_queue_seconds",
            "Time waiting for a batch (with worker inference: for a free decode worker)",
            ["modality"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "mla_inference_seconds", "ONNX Runtime time per batch", ["modality", "provider"], buckets=FAST_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "mla_batch_size",
            "Inputs per ONNX Runtime call (padding rows not counted)",
            ["modality"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.padded_rows = Counter(
            "mla_batch_padded_rows_total", "Zero rows added to fill a batch up to its bucket size", ["modality"], registry=r
        )
        self.queue_length = Gauge(
            "mla_queue_length", "Inputs waiting for a batch (server inference; see mla_decode_waiting)", ["modality"], registry=r
        )
        self.subsets = Counter("mla_modality_subset_total", "Predictions by the set of modalities sent", ["subset"], registry=r)
        self.abstained = Counter(
            "mla_abstained_total", "Predictions whose calibrated confidence fell below the threshold", ["subset"], registry=r
        )
        self.entropy = Histogram(
            "mla_entropy_nats", "Entropy of each modality's prediction", ["modality"], buckets=ENTROPY_BUCKETS, registry=r
        )
        self.weight = Histogram(
            "mla_fusion_weight", "Fusion weight of each modality", ["modality"], buckets=UNIT_BUCKETS, registry=r
        )
        self.typicality = Histogram(
            "mla_typicality",
            "Typicality gate of each modality's input (1: logits like validation's; gated fusion rules only)",
            ["modality"],
            buckets=UNIT_BUCKETS,
            registry=r,
        )
        self.ood_checks = Counter(
            "mla_ood_checks_total",
            "Inputs checked by their modality's out-of-distribution detector, by verdict (in_distribution: true/false)",
            ["modality", "in_distribution"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "mla_decode_worker_restarts_total",
            "Decode workers replaced, by reason (died, timeout, memory, hung, protocol)",
            ["reason"],
            registry=r,
        )
        self.decode_workers = Gauge("mla_decode_workers", "Decode workers running", registry=r)
        self.decode_idle = Gauge("mla_decode_workers_idle", "Decode workers running and free for a job", registry=r)
        self.decode_waiting = Gauge(
            "mla_decode_waiting", "Decodes waiting in line for a worker (one sent ahead to a busy worker not counted)", registry=r
        )
        self.decode_refused = Counter(
            "mla_decode_refused_total", "Decodes refused for overload (line_full, wait_timeout)", ["reason"], registry=r
        )
        self.predictions_in_flight = Gauge(
            "mla_predictions_in_flight",
            "Predictions admitted and not yet answered (MLA_MAX_REQUESTS_IN_FLIGHT bounds it)",
            registry=r,
        )
        self.admission_refused = Counter(
            "mla_admission_refused_total", "Predictions refused before their body was read: too many in flight", registry=r
        )
        self.spooled = Gauge(
            "mla_upload_spool_bytes", "Bytes of uploads reserved on disk (MLA_MAX_SPOOL_BYTES bounds it)", registry=r
        )
        self.body_memory = Gauge(
            "mla_body_memory_bytes",
            "Open Inference Protocol bodies in memory, their JSON's parse counted too (MLA_MAX_BODY_MEMORY_BYTES bounds it)",
            registry=r,
        )
        self.rejected = Counter("mla_rejected_total", "Requests refused, by error code", ["code"], registry=r)
        self.ready = Gauge("mla_ready", "1 when the model is loaded and warmed up", registry=r)
        self.version_loaded = Gauge(
            "mla_model_version_loaded",
            "1 while a model version is loaded and answering, 0 once unloaded",
            ["version"],
            registry=r,
        )
        self.version_predictions = Counter(
            "mla_model_version_predictions_total",
            "Predictions answered, by the model version that answered",
            ["version"],
            registry=r,
        )
        self.model_loads = Counter(
            "mla_model_loads_total",
            "Model version loads (repository API or poll), by outcome (loaded, failed)",
            ["outcome"],
            registry=r,
        )
        self.model_info = Gauge(
            "mla_model_info", "The model being served (value 1)", ["name", "version", "modality", "provider"], registry=r
        )
