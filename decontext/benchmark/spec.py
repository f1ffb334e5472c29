"""A benchmark spec: TOML data (a shipped name or a file), checked completely before anything loads.

    name = "toy-quick"
    editors = ["toy-v1"]                       # shipped toy editors, or "flux-kontext" (real; --model tiny)
    budgets = [16]                             # L-inf, 1/255 units
    methods = ["noise", "decontext", "protector:toy-decontext"]   # "noise" is the control (required)
    attackers = ["none", "jpeg", "regen:t=0.3", "remover", "worst"]
    [identities]
    source = "toy"                             # the editor's world's held-out identities; or "folder"
    count = 20                                 # (folder: path = "photos/")
    [edits]
    prompt_indices = [0, 2, 4, 6, 8, 10]       # the editor's prompt pool (toy); or prompts = ["..."]
    seed = 42
    [pgd]
    preset = "fast"
    steps = 30

Every problem is a ``SpecError`` naming the key and what it allows; the command exits 2 on it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

CONTROL = "noise"  # the method every effect is measured against (required in a spec)

SCHEMA_VERSION = 1
REAL_EDITORS = {"flux-kontext": ("flux_kontext", "black-forest-labs/FLUX.1-Kontext-dev")}  # name -> (family, model)
MAX_BUDGET = 64.0
TOP_KEYS = {
    "name": str,
    "description": str,
    "seed": int,
    "editors": list,
    "budgets": list,
    "methods": list,
    "attackers": list,
    "metrics": list,
    "identities": dict,
    "edits": dict,
    "pgd": dict,
    "paper": dict,
    "model": str,
}
IDENTITY_KEYS = {"source": str, "count": int, "seed": int, "path": str, "size": int}
EDIT_KEYS = {"prompt_indices": list, "prompts": list, "seed": int, "steps": int, "guidance": float}
PGD_KEYS = {"preset": str, "steps": int, "alpha": float}
METRICS = ("identity", "edit_success", "psnr_input", "attack_cost")
PRESETS = ("fast", "paper", "none")


class SpecError(ValueError):
    """A spec that cannot run: the message names the key and the values it allows."""


@dataclass(frozen=True)
class Spec:
    name: str
    editors: list[str]
    budgets: list[float]
    methods: list[str]
    attackers: list[str]
    identities: dict
    edits: dict
    pgd: dict
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    seed: int = 0
    description: str = ""
    paper: dict = field(default_factory=dict)
    model: str = ""  # the real editors' weights instead of their default (``--model tiny``: a smoke test)

    def to_dict(self) -> dict:
        values = asdict(self)
        if not values["model"]:
            values.pop("model")  # the default weights: the digest of a spec that never names a model
        return values

    @property
    def digest(self) -> str:
        """SHA-256 (16 hex) of the spec's canonical JSON: what a run folder's records were made under."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def to_toml(self) -> str:
        """The spec as TOML (``load_spec(text)`` gives it back)."""
        lines = []
        for key, value in self.to_dict().items():
            if not isinstance(value, dict):
                lines.append(f"{key} = {_toml_value(value)}")
        for key, value in self.to_dict().items():
            if isinstance(value, dict) and value:
                lines.append(f"\n[{key}]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in value.items())
        return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def shipped_specs() -> list[str]:
    """The specs shipped in the package (decontext/benchmark/specs/<name>.toml)."""
    folder = resources.files("decontext.benchmark") / "specs"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_spec_text(name_or_path: str) -> tuple[str, str]:
    """(TOML text, where it came from) of a shipped spec name or a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise SpecError(f"spec: no file {name_or_path!r} (or a shipped name: {', '.join(shipped_specs())})")
        return path.read_text(encoding="utf-8"), str(path)
    if name_or_path not in shipped_specs():
        raise SpecError(f"spec: unknown name {name_or_path!r} (shipped: {', '.join(shipped_specs())}; or a .toml file)")
    text = (resources.files("decontext.benchmark") / "specs" / f"{name_or_path}.toml").read_text(encoding="utf-8")
    return text, f"shipped:{name_or_path}"


def load_spec(
    name_or_path_or_text: str, base: Path | None = None, photos: str | None = None, model: str | None = None
) -> Spec:
    """A checked Spec from a shipped name, a .toml file or TOML text (relative folders from ``base``,
    else the file's folder, else the working folder); ``photos``: the folder of a folder spec's photos."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    if "\n" in name_or_path_or_text or "=" in name_or_path_or_text:
        text, origin = name_or_path_or_text, "text"
    else:
        text, origin = read_spec_text(name_or_path_or_text)
        if not origin.startswith("shipped:") and base is None:
            base = Path(origin).parent
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"spec ({origin}): not TOML: {exc}") from None
    if photos is not None:
        data.setdefault("identities", {})["path"] = str(Path(photos).resolve())
    if model is not None:
        data["model"] = model
    return validate(data, base)


def _check_keys(table: dict, allowed: dict, where: str) -> None:
    for key, value in table.items():
        if key not in allowed:
            raise SpecError(f"{where}{key}: unknown key (allowed: {', '.join(allowed)})")
        kind = allowed[key]
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok or (kind is int and isinstance(value, bool)):
            raise SpecError(f"{where}{key}: expected a {kind.__name__}, got {value!r}")


def _require(table: dict, key: str, where: str):
    if key not in table:
        raise SpecError(f"{where}{key}: missing (required)")
    return table[key]


def validate(data: dict, base: Path | None = None) -> Spec:
    """Every check a spec passes before a run loads anything (editor, method or attacker names, budgets,
    folders, keys); a SpecError names the first problem's key and its allowed values."""
    from ..attackers import KINDS as ATTACKERS
    from ..attackers import parse_attacker
    from ..editors import FAMILIES
    from ..methods import METHODS, missing_capabilities, parse_method
    from ..toy.names import TOY_EDITORS, toy_family

    _check_keys(data, TOP_KEYS, "")
    known_editors = sorted(TOY_EDITORS) + sorted(REAL_EDITORS)
    editors = list(_require(data, "editors", ""))
    if not editors:
        raise SpecError(f"editors: empty (allowed: {', '.join(known_editors)})")
    for name in editors:
        if name not in known_editors:
            raise SpecError(f"editors: unknown editor {name!r} (allowed: {', '.join(known_editors)})")
    budgets = [
        float(b) if isinstance(b, (int, float)) and not isinstance(b, bool) else b
        for b in _require(data, "budgets", "")
    ]
    for b in budgets:
        if not isinstance(b, float) or not 0 < b <= MAX_BUDGET:
            raise SpecError(f"budgets: {b!r} out of range (allowed: numbers in (0, {MAX_BUDGET:g}], in 1/255)")
    if not budgets:
        raise SpecError("budgets: empty (allowed: numbers in (0, 64], in 1/255)")
    methods = list(_require(data, "methods", ""))
    plain = sorted(n for n in METHODS if n != "amortized")
    for m in methods:
        if not isinstance(m, str):
            raise SpecError(f"methods: {m!r} is not a name (allowed: {', '.join(plain)}, a+b, protector:NAME)")
        if m.startswith("protector:"):
            _check_protector(m.partition(":")[2])
            continue
        bad = [n for n in m.split("+") if n.partition(":")[0].strip() not in METHODS or n.strip() == "amortized"]
        if bad:
            raise SpecError(
                f"methods: unknown method {bad[0]!r} in {m!r} (allowed: {', '.join(plain)}, a+b compositions, "
                "protector:NAME, options as encoder:decoys=toy-train)"
            )
        for part in m.split("+"):
            try:
                parse_method(part)
            except ValueError as exc:
                raise SpecError(f"methods: {exc}") from None
    for editor in editors:  # a method an editor's family cannot serve (DeContext on a UNet) is refused by name
        family = FAMILIES[REAL_EDITORS[editor][0] if editor in REAL_EDITORS else toy_family(editor)]
        for m in methods:
            names = [] if m.startswith("protector:") else [parse_method(n)[0] for n in m.split("+")]
            lacking = [n for n in names if missing_capabilities(n, family.capabilities)]
            if lacking:
                raise SpecError(
                    f"methods: {lacking[0]!r} does not apply to editor {editor!r} (the {family.name} family lacks "
                    f"{', '.join(missing_capabilities(lacking[0], family.capabilities))}); give that editor its own "
                    "spec, or leave the method out"
                )
    if CONTROL not in methods:
        raise SpecError(f"methods: {CONTROL!r} (the control every effect is measured against) is missing")
    attackers = list(_require(data, "attackers", ""))
    for a in attackers:
        try:
            parse_attacker(a)
        except ValueError as exc:
            raise SpecError(f"attackers: {exc} (allowed: {', '.join(ATTACKERS)})") from None
    identities = dict(_require(data, "identities", ""))
    _check_keys(identities, IDENTITY_KEYS, "identities.")
    source = identities.get("source", "toy")
    if source not in ("toy", "folder"):
        raise SpecError(f"identities.source: {source!r} (allowed: toy, folder)")
    toy = source == "toy"
    if toy:
        count = identities.get("count", 20)
        if not 2 <= count <= 100:
            raise SpecError(f"identities.count: {count} out of range (allowed: 2..100, a world's held-out set)")
        if any(a.partition(":")[0] == "editor_clean" for a in attackers):
            raise SpecError(
                "attackers: editor_clean asks the editor for the photo back in words a toy editor was never "
                "taught (allowed on the toys: none, the breakers, regen, remover, worst)"
            )
        real = [e for e in editors if e in REAL_EDITORS]
        if real:
            raise SpecError(f"identities.source: 'toy' needs toy editors, not {real[0]!r} (allowed: folder)")
    else:
        folder = Path(_require(identities, "path", "identities."))
        folder = folder if folder.is_absolute() or base is None else base / folder
        if not folder.is_dir():
            raise SpecError(f"identities.path: no folder {str(folder)!r}")
        identities["path"] = str(folder)
        toys = [e for e in editors if e not in REAL_EDITORS]
        if toys:
            raise SpecError(f"identities.source: 'folder' needs real editors, not {toys[0]!r} (allowed: toy)")
        if any(a.startswith("remover") or a.startswith("regen") for a in attackers):
            raise SpecError(
                "attackers: remover and regen need a toy world's training identities (allowed on a folder: "
                "none, the breakers, editor_clean, worst)"
            )
    edits = dict(_require(data, "edits", ""))
    _check_keys(edits, EDIT_KEYS, "edits.")
    if ("prompt_indices" in edits) == ("prompts" in edits):
        raise SpecError(
            "edits: give exactly one of prompt_indices (the toy pool) or prompts (allowed keys: "
            + ", ".join(EDIT_KEYS)
            + ")"
        )
    if "prompts" in edits and (not edits["prompts"] or not all(isinstance(p, str) and p for p in edits["prompts"])):
        raise SpecError("edits.prompts: expected a non-empty list of instructions (allowed: strings)")
    if "prompt_indices" in edits and not toy:
        raise SpecError("edits.prompt_indices: indexes a toy editor's pool (allowed on a folder: prompts)")
    if "prompt_indices" in edits and toy:
        from ..prompts import load_prompts
        from ..toy.names import toy_prompts

        for editor in editors:
            size = len(load_prompts(toy_prompts(editor)))
            bad = [i for i in edits["prompt_indices"] if not isinstance(i, int) or not 0 <= i < size]
            if bad or not edits["prompt_indices"]:
                raise SpecError(f"edits.prompt_indices: {bad or '[]'} (allowed: 0..{size - 1}, {editor}'s prompt pool)")
    pgd = dict(data.get("pgd", {}))
    _check_keys(pgd, PGD_KEYS, "pgd.")
    if pgd.get("preset", "fast") not in PRESETS:
        raise SpecError(f"pgd.preset: {pgd['preset']!r} (allowed: {', '.join(PRESETS)})")
    if "steps" in pgd and not 1 <= pgd["steps"] <= 5000:
        raise SpecError(f"pgd.steps: {pgd['steps']} out of range (allowed: 1..5000)")
    if data.get("model") and not any(e in REAL_EDITORS for e in editors):
        raise SpecError(
            f"model: {data['model']!r} replaces a real editor's weights; the spec has none (allowed: omit it)"
        )
    metrics = list(data.get("metrics", METRICS))
    for m in metrics:
        if m not in METRICS:
            raise SpecError(f"metrics: unknown metric {m!r} (allowed: {', '.join(METRICS)})")
    return Spec(
        name=str(_require(data, "name", "")),
        editors=editors,
        budgets=budgets,
        methods=methods,
        attackers=attackers,
        identities={"source": source, **identities},
        edits=edits,
        pgd=pgd,
        metrics=metrics,
        seed=int(data.get("seed", 0)),
        description=str(data.get("description", "")),
        paper=dict(data.get("paper", {})),
        model=str(data.get("model", "")),
    )


def _check_protector(name: str) -> None:
    from ..methods.protector_files import read_config, shipped_protectors

    try:
        read_config(name)
    except (OSError, ValueError):
        raise SpecError(
            f"methods: unknown protector {name!r} (allowed: protector:NAME with NAME one of "
            f"{', '.join(shipped_protectors())}, or a protector folder)"
        ) from None
