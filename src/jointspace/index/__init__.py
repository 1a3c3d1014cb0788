"""Search a joint space: FAISS index + SQLite metadata, query encoding, index building."""
