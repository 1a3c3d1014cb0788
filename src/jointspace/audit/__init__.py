"""`jointspace audit`: what is wrong with a dataset, found through a run's joint space.

space.py (every sample embedded, content hashes), neighbours.py (FAISS k-NN in chunks, partner ranks),
findings.py (exact and near duplicates, leaks, mismatched pairs, outliers, uniqueness, representativeness),
labels.py (cleanlab over k-fold linear-probe probabilities), folder.py (audit.json / audit.csv / samples.csv,
read back by `data subsample --drop-from` and the web service), page.py (audit.html), run.py (the verb).
Above evaluate/ and index/ (it embeds splits and searches), below cli and serve."""
