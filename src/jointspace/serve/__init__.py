"""HTTP search service (FastAPI) and its web page."""
