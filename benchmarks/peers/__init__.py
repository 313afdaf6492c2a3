"""Peer servers on the service's work (issue 31): LitServe and BentoML, run from their own venv (.venv/peers)."""
