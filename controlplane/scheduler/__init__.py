"""scheduler: arrives with its own issue (see DESIGN.md); the package exists so the layer contracts cover it."""
