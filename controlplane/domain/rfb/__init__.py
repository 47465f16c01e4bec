"""The pixel-only RFB contract (shared/RFB-FILTER.md), as pure sans-IO state machines."""
