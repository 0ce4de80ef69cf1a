"""Serving the deployed ensemble (host side): coordinator.py (fan-out, deadlines, degraded answers), server.py
(the HTTP service of `edvit-tool serve`), evaluate.py (what a deployment should answer and does answer)."""
