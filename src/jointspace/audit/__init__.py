"""`jointspace audit`: what is wrong with a dataset, found through a run's joint space (or, for a classify
run, its classifier) and the values' own content.

space.py (every sample embedded, content hashes), neighbours.py (FAISS k-NN in chunks, partner ranks),
search.py (where the searches run: FAISS, or collections of the audit's own in a Milvus), findings.py (exact
and near duplicates, leaks, mismatched pairs, outliers, uniqueness, representativeness), content.py (near
copies by the kinds' content vectors), labels.py (cleanlab over k-fold linear-probe probabilities, or a
classifier's own), folder.py (audit.json / audit.csv / samples.csv, read back by `data subsample
--drop-from` and the web service), page.py (audit.html), run.py (the verb); mine.py (`jointspace mine`).
Above evaluate/ and index/ (it embeds splits and searches), below tasks, cli and serve."""
