//! Admin API, /healthz and /metrics routing.
