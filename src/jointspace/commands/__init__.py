"""The command groups that jointspace.cli mounts, one module each: `index` and `search` (index.py), `serve`
(serve.py), `export` (export.py), `augment` (augment.py). The command line is the top layer: these
modules may import any package; no package imports them."""
