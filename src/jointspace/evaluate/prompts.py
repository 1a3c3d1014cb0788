"""Zero-shot prompts per class, and where they came from (eval.json and the report say which):
- `given`: a file of prompts per class (`eval.zero_shot_prompts`, `eval --zero-shot-prompts`), or the
  prompts a built-in set ships in its dataset.json;
- `captions`: the data's own captions, recorded per class by `data pack`;
- `templates x class names`: the dataset's `prompt_templates` (or a few defaults) over the class names.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from jointspace.errors import UsageError

GIVEN, CAPTIONS, TEMPLATES = "given", "captions", "templates x class names"
DEFAULT_TEMPLATES = ("{}", "a {}", "a photo of a {}")
FIELD = "eval.zero_shot_prompts"


def read_prompt_file(path: str | Path, class_names: list[str]) -> dict[str, list[str]]:
    """A YAML or JSON mapping {class name: [prompt, ...]} (a single string is one prompt) naming every
    class; anything else is a UsageError naming the field, the file and what is wrong."""
    path = Path(path).expanduser()
    where = f"{FIELD}: {path}"
    if not path.is_file():
        raise UsageError(f"{where}: no such file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UsageError(f"{where}: not YAML or JSON ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a mapping of class name -> list of prompts, got {type(raw).__name__}")
    out: dict[str, list[str]] = {}
    for name, prompts in raw.items():
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise UsageError(f"{where}: class {str(name)!r}: expected a non-empty list of non-empty strings, "
                             f"got {json.dumps(prompts, default=str)[:80]}")
        out[str(name)] = [p.strip() for p in prompts]
    unknown = [n for n in out if n not in class_names]
    missing = [n for n in class_names if n not in out]
    if unknown or missing:
        what = "; ".join(filter(None, [f"classes the data lacks: {unknown}" if unknown else "",
                                       f"no prompts for {missing}" if missing else ""]))
        raise UsageError(f"{where}: {what} (the data's classes: {', '.join(class_names)})")
    return out


def choose_prompts(info: dict, given: str | Path | None = None) -> tuple[list[list[str]], dict] | None:
    """Prompts per class (in class order) and {"from": given|captions|templates x class names, ...}, or
    None without class names. A class the dataset's prompts miss gets the templates (listed as `filled`)."""
    names = list(info.get("class_names") or [])
    if not names:
        return None
    templates = list(info.get("prompt_templates") or DEFAULT_TEMPLATES)
    by_template = {n: [t.format(n) for t in templates] for n in names}
    if given is not None:
        prompts = read_prompt_file(given, names)
        return [prompts[n] for n in names], {"from": GIVEN, "file": str(given)}
    own = info.get("zero_shot_prompts") or {}
    if not own:
        return [by_template[n] for n in names], {"from": TEMPLATES, "templates": templates}
    source = {"from": info.get("zero_shot_prompts_from") or GIVEN}
    filled = [n for n in names if not own.get(n)]
    source.update({"filled": filled} if filled else {})
    return [list(own.get(n) or by_template[n]) for n in names], source
