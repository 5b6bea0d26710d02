"""Training of the small teachers on measured labels (``fiqa-train``)."""
