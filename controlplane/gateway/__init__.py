"""gateway: the pixel-only WebSocket <-> RFB relay (app.py: the endpoint, relay.py: the pump)."""
