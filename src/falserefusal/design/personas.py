"""Personas and persona phrasings: loading and validating the user-extensible YAML fixture."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from falserefusal.types import BASELINE, BASELINE_ID, FalseRefusalError, Persona, PersonaPhrasing

_TOP_KEYS = {"phrasings", "personas"}
_PERSONA_KEYS = {"id", "dimension", "wording"}
_PHRASING_KEYS = {"id", "template"}
_INTERSECTION_KEYS = {"id", "of", "wording"}

#: the persona dimension of an intersection's condition (its markers keep their own dimensions)
INTERSECTION_DIMENSION = "intersection"


@dataclass(frozen=True)
class Intersection:
    """Two or three persona markers of different dimensions asked as one identity ("a Black Muslim woman")."""

    id: str
    of: tuple[str, ...]  # the markers' persona ids
    wording: str

    @property
    def persona(self) -> Persona:
        """The intersection as one more condition of every request block."""
        return Persona(id=self.id, dimension=INTERSECTION_DIMENSION, wording=self.wording)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, turning every failure into one line that names the file."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FalseRefusalError(f"{path}: file not found; fix: check the path") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise FalseRefusalError(
            f"{path}:{line} is not valid YAML ({getattr(error, 'problem', error)}); fix the syntax"
        ) from None


def check_keys(path: Path, what: str, entry: Any, allowed: set[str], required: set[str]) -> dict[str, Any]:
    """Reject unknown or missing keys with a message naming the file, the entry and the fix."""
    if not isinstance(entry, dict):
        raise FalseRefusalError(f"{path}: {what} must be a mapping, got {type(entry).__name__}; fix the entry")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise FalseRefusalError(
            f"{path}: {what} has unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(sorted(allowed))}"
        )
    missing = sorted(required - set(entry))
    if missing:
        raise FalseRefusalError(f"{path}: {what} is missing {', '.join(missing)}; fix: add it")
    return entry


def load_personas(path: Path) -> tuple[tuple[Persona, ...], tuple[PersonaPhrasing, ...]]:
    """Read personas and phrasings; the baseline is implicit and may not be redefined."""
    data = read_yaml(path)
    data = check_keys(path, "the top level", data, _TOP_KEYS | {"intersections", "translations"}, _TOP_KEYS)
    personas: list[Persona] = []
    for index, entry in enumerate(data["personas"] or []):
        entry = check_keys(path, f"persona #{index + 1}", entry, _PERSONA_KEYS, _PERSONA_KEYS)
        persona = Persona(id=str(entry["id"]), dimension=str(entry["dimension"]), wording=str(entry["wording"]))
        if persona.id == BASELINE_ID:
            raise FalseRefusalError(
                f"{path}: persona id '{BASELINE_ID}' is reserved for the no-persona baseline; rename it"
            )
        personas.append(persona)
    phrasings: list[PersonaPhrasing] = []
    for index, entry in enumerate(data["phrasings"] or []):
        entry = check_keys(path, f"phrasing #{index + 1}", entry, _PHRASING_KEYS, _PHRASING_KEYS)
        template = str(entry["template"])
        if "{persona}" not in template:
            raise FalseRefusalError(f"{path}: phrasing '{entry['id']}' has no {{persona}} placeholder; fix: add it")
        phrasings.append(PersonaPhrasing(id=str(entry["id"]), template=template))
    for kind, ids in (("persona", [p.id for p in personas]), ("phrasing", [p.id for p in phrasings])):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise FalseRefusalError(f"{path}: duplicate {kind} id(s) {', '.join(duplicates)}; fix: make ids unique")
    if not personas or not phrasings:
        raise FalseRefusalError(f"{path}: needs at least one persona and one phrasing")
    return tuple(personas), tuple(phrasings)


def load_intersections(path: Path, personas: Sequence[Persona]) -> tuple[Intersection, ...]:
    """The file's `intersections:` (none when absent): known marker ids of distinct dimensions, 2 or 3, unique ids."""
    data = read_yaml(path)
    entries = (data.get("intersections") if isinstance(data, dict) else None) or []
    if not isinstance(entries, list):
        raise FalseRefusalError(f"{path}: intersections must be a list of {{id, of, wording}}; fix the entry")
    by_id = {p.id: p for p in personas}
    taken = set(by_id) | {BASELINE_ID, INTERSECTION_DIMENSION} | {p.dimension for p in personas}
    found: list[Intersection] = []
    for index, entry in enumerate(entries):
        entry = check_keys(path, f"intersection #{index + 1}", entry, _INTERSECTION_KEYS, _INTERSECTION_KEYS)
        name, markers = str(entry["id"]), entry["of"]
        if name in taken or name in {i.id for i in found}:
            raise FalseRefusalError(
                f"{path}: intersection id '{name}' is already a persona, dimension or intersection id; fix: rename it"
            )
        if not isinstance(markers, list) or not 2 <= len(markers) <= 3:
            raise FalseRefusalError(f"{path}: intersection '{name}' of: must list 2 or 3 persona ids; fix the list")
        unknown = [str(m) for m in markers if str(m) not in by_id]
        if unknown:
            raise FalseRefusalError(
                f"{path}: intersection '{name}' names unknown persona(s) {', '.join(unknown)}; fix: use ids of "
                "personas: in this file"
            )
        dimensions = [by_id[str(m)].dimension for m in markers]
        if len(set(dimensions)) != len(dimensions):
            raise FalseRefusalError(
                f"{path}: intersection '{name}' combines two markers of one dimension ({', '.join(dimensions)}); "
                "fix: take each marker from a different dimension"
            )
        found.append(Intersection(id=name, of=tuple(str(m) for m in markers), wording=str(entry["wording"])))
    return tuple(found)


def select_intersections(
    intersections: Sequence[Intersection], wanted: Sequence[str] | None, all_of_them: bool
) -> tuple[Intersection, ...]:
    """The intersections a run asks: all with --intersections, else those --personas names (by id or "intersection")."""
    if all_of_them:
        return tuple(intersections)
    wanted = list(wanted or ())
    return tuple(i for i in intersections if i.id in wanted or INTERSECTION_DIMENSION in wanted)


def select_conditions(
    personas: Sequence[Persona],
    intersections: Sequence[Intersection],
    wanted: Sequence[str] | None,
    all_intersections: bool,
    source: str,
) -> tuple[tuple[Persona, ...], tuple[Intersection, ...]]:
    """The run's personas (single markers, then intersections) and its intersections. An intersection brings its
    markers along, so it is asked in the same request blocks as they are; without any, as `select_personas`."""
    chosen = select_intersections(intersections, wanted, all_intersections)
    names = {i.id for i in intersections} | {INTERSECTION_DIMENSION}
    known = {p.id for p in personas} | {p.dimension for p in personas} | names | {BASELINE_ID}
    unknown = [w for w in wanted or () if w not in known]
    if unknown and intersections:
        raise FalseRefusalError(
            f"--personas: unknown persona {', '.join(unknown)}; known ids, dimensions and intersections in {source}: "
            f"{', '.join(sorted(known - {BASELINE_ID}))}"
        )
    if not chosen:
        return select_personas(personas, wanted, source), ()
    singles_wanted = [w for w in wanted or () if w not in names]
    singles = select_personas(personas, singles_wanted, source) if singles_wanted or not wanted else ()
    markers = {m for i in chosen for m in i.of} | {p.id for p in singles}
    ordered = tuple(p for p in personas if p.id in markers)
    return ordered + tuple(i.persona for i in chosen), chosen


def select_personas(personas: Sequence[Persona], wanted: Sequence[str] | None, source: str) -> tuple[Persona, ...]:
    """Keep the personas the user asked for (by id or dimension), failing on unknown names."""
    if not wanted:
        return tuple(personas)
    known = {p.id for p in personas} | {p.dimension for p in personas}
    unknown = [w for w in wanted if w not in known and w != BASELINE_ID]
    if unknown:
        raise FalseRefusalError(
            f"--personas: unknown persona {', '.join(unknown)}; known ids and dimensions in {source}: "
            f"{', '.join(sorted(known))}"
        )
    chosen = tuple(p for p in personas if p.id in wanted or p.dimension in wanted)
    if not chosen:
        raise FalseRefusalError("--personas: select at least one persona besides the baseline")
    return chosen


def all_conditions(personas: Sequence[Persona]) -> tuple[Persona, ...]:
    """The baseline first, then the personas: the order every table and plot uses."""
    return (BASELINE, *personas)
