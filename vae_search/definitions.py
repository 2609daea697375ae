"""Study definitions as data: grid presets and search spaces, TOML files read into typed
objects. Nothing here knows about training.

The definitions ship inside the package (vae_search/studies/*.toml, package data), so a
name (`b1`, `search`, `search-wide`) finds them from any folder after any install. A file of
one's own is given by its path (`--preset ./studies/x.toml`, `--space my-space.toml`); a
`studies/` folder in the current directory is never looked in unasked. A study records the
*name* of its preset, and what a study says is looked up among the packaged presets only:
a shared study cannot make a command read a file of its choosing.

Every file is validated whole before anything runs: unknown keys, non-finite or
non-integer bounds, empty or non-scalar choices, and values the model cannot take are one
line naming the file and the key.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from vae_search.errors import UsageError

PARAM_NAMES = ("latent_dim", "base_channels", "beta", "lr")
# A space file may also search these (they become trial parameters instead of the study's
# budget; without them in the file, every trial uses --batch-size and a constant lr).
OPTIONAL_PARAMS = ("batch_size", "lr_schedule")
INT_PARAMS = ("latent_dim", "base_channels", "batch_size")  # whole numbers, at least 1
LR_SCHEDULES = ("constant", "cosine", "onecycle")  # what train.py's scheduler knows
DEFAULT_SPACE = "search"


def packaged_dir() -> Path:
    """The definitions shipped in the package."""
    return Path(str(resources.files("vae_search") / "studies"))


def _is_path(name_or_path: str) -> bool:
    return name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a folder, not a .toml file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{what} {path} is not valid TOML: {e}") from None
    except OSError as e:
        raise UsageError(f"{what} {path} cannot be read: {e.strerror}") from None


# ---------------------------------------------------------------- presets


@dataclass(frozen=True)
class GridPoint:
    config: int  # the report's row number
    params: dict[str, float | int]  # latent_dim, base_channels, beta, lr
    report: dict[str, Any] = field(default_factory=dict)  # the report's figures for this row


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    epochs: int
    batch_size: int
    points: tuple[GridPoint, ...]
    baseline: int | None = None  # config number of the report's baseline row
    path: Path | None = None

    def distributions(self) -> dict[str, BaseDistribution]:
        """Each parameter as a categorical over the grid's values, as GridSampler would."""
        return {
            name: CategoricalDistribution(sorted({p.params[name] for p in self.points}))
            for name in PARAM_NAMES
        }

    def point_for(self, params: dict[str, Any]) -> GridPoint | None:
        return next((p for p in self.points if p.params == {k: params.get(k) for k in PARAM_NAMES}), None)


def available_presets() -> list[str]:
    return sorted(p.stem for p in packaged_dir().glob("*.toml") if _is_preset(p))


def _is_preset(path: Path) -> bool:
    try:
        return "points" in tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False


def load_preset(name_or_path: str) -> Preset:
    """A packaged preset by name (`b1`), or a file of one's own by its path."""
    if _is_path(name_or_path):
        path = Path(name_or_path)
    else:
        path = packaged_dir() / f"{name_or_path}.toml"
        if name_or_path not in available_presets():
            raise UsageError(
                f"unknown preset {name_or_path!r}; available: {', '.join(available_presets()) or 'none'}"
                " (or give the path of a .toml file, such as ./studies/mine.toml)"
            )
    raw = _read_toml(path, "preset file")
    try:
        _known_keys(raw, PRESET_KEYS, "the file")
        if not isinstance(raw.get("points"), list):
            raise ValueError("it has no [[points]] tables" if "points" not in raw else "points must be [[points]] tables")
        for i, p in enumerate(raw["points"], 1):
            where = f"point {i} (config {p.get('config', '?')})" if isinstance(p, dict) else f"point {i}"
            _known_keys(p, POINT_KEYS, where)
            _known_keys(p.get("report", {}), REPORT_KEYS, f"{where}'s report")
            missing = [k for k in POINT_KEYS - {"report"} if k not in p]
            if missing:  # every figure of a point is the report's own: none is filled in by a default
                raise ValueError(f"{where} has no {', '.join(sorted(missing))}")
        points = tuple(
            GridPoint(
                config=_int(p["config"], "config"),
                params={
                    "latent_dim": _int(p["latent_dim"], "latent_dim"),
                    "base_channels": _int(p["base_channels"], "base_channels"),
                    "beta": _positive(p["beta"], "beta"),
                    "lr": _positive(p["lr"], "lr"),
                },
                report=_report(p.get("report", {})),
            )
            for p in raw["points"]
        )
        configs = [q.config for q in points]
        if len(set(configs)) < len(configs):
            raise ValueError(f"config {', '.join(str(c) for c in sorted(set(configs)) if configs.count(c) > 1)} is given "
                             "to more than one point")
        same = sorted(q.config for q in points if sum(o.params == q.params for o in points) > 1)
        if same:  # a grid trains each parameter set once per seed: a repeat would be a point with no runs
            raise ValueError(f"configs {', '.join(map(str, same))} have the same parameters")
        preset = Preset(
            name=str(raw.get("name", path.stem)),
            title=str(raw.get("title", path.stem)),
            epochs=_int(raw.get("epochs", 10), "epochs"),
            batch_size=_int(raw.get("batch_size", 128), "batch_size"),
            points=points,
            baseline=None if raw.get("baseline") is None else _int(raw["baseline"], "baseline"),
            path=path,
        )
    except (TypeError, ValueError) as e:
        raise UsageError(f"preset file {path}: {e}; see vae_search/studies/b1.toml for the shape") from None
    if not points:
        raise UsageError(f"preset file {path} has no [[points]]")
    if preset.baseline is not None and preset.baseline not in {p.config for p in points}:
        raise UsageError(f"preset file {path}: baseline = {preset.baseline!r} is not the config of any point")
    return preset


def grid_preset(study_attrs: dict[str, Any], given: str | None = None) -> Preset:
    """A grid study's preset: the one the user names (`--preset`, a name or a file of their
    own), else the packaged one the study names."""
    return load_preset(given) if given else preset_of(study_attrs)


def preset_of(study_attrs: dict[str, Any]) -> Preset:
    """The preset a grid study was run with, by the name it recorded, among the packaged
    presets only (never a path the study names). Older studies recorded a path: its file
    name is taken as the name."""
    recorded = str(study_attrs.get("preset", "b1"))
    name = Path(recorded).stem if recorded.endswith(".toml") else recorded
    if _is_path(name) or name not in available_presets():
        raise UsageError(f"the study's preset {recorded!r} is not a packaged preset ({', '.join(available_presets())}); "
                         "pass --preset with its file")
    return load_preset(name)


# ---------------------------------------------------------------- search spaces


def space_path(name_or_path: str | Path | None) -> Path:
    """A packaged space by name (`search`, `search-wide`), or a file by its path."""
    value = str(name_or_path) if name_or_path is not None else DEFAULT_SPACE
    if _is_path(value):
        return Path(value)
    path = packaged_dir() / f"{value}.toml"
    if not path.is_file() or _is_preset(path):
        spaces = sorted(p.stem for p in packaged_dir().glob("*.toml") if not _is_preset(p))
        raise UsageError(f"unknown search space {value!r}; available: {', '.join(spaces)} (or give the path of a .toml file)")
    return path


_KEYS = {"int": {"type", "low", "high", "log", "step"}, "float": {"type", "low", "high", "log", "step"},
         "categorical": {"type", "choices"}}


def load_space(name_or_path: str | Path | None = None) -> dict[str, BaseDistribution]:
    """The search space as Optuna distributions, one per trial parameter, validated whole."""
    path = space_path(name_or_path)
    raw = _read_toml(path, "search-space file")
    missing = [n for n in PARAM_NAMES if n not in raw]
    unknown = [n for n in raw if n not in PARAM_NAMES + OPTIONAL_PARAMS]
    if missing or unknown:
        raise UsageError(
            f"search-space file {path} must define {', '.join(PARAM_NAMES)} (and may define {', '.join(OPTIONAL_PARAMS)})"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
        )
    space: dict[str, BaseDistribution] = {}
    for name in [n for n in PARAM_NAMES + OPTIONAL_PARAMS if n in raw]:
        try:
            space[name] = _distribution(name, raw[name])
        except (KeyError, TypeError, ValueError) as e:
            message = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            raise UsageError(f"search-space file {path}: [{name}] {message}") from None
    return space


def _distribution(name: str, spec: Any) -> BaseDistribution:
    if not isinstance(spec, dict):
        raise ValueError(f"must be a table with a type, not {spec!r}")
    kind = spec.get("type")
    if kind not in _KEYS:
        raise ValueError("needs a type: int, float or categorical" if kind is None
                         else f"type must be int, float or categorical, not {kind!r}")
    extra = sorted(set(spec) - _KEYS[kind])
    if extra:
        raise ValueError(f"has unknown key(s) {', '.join(extra)}; {'an' if kind == 'int' else 'a'} {kind} parameter takes {', '.join(sorted(_KEYS[kind]))}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError("choices must be a non-empty list")
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError(f"choices {choices!r} repeat a value")
        for c in choices:
            _check_value(name, c)
        return CategoricalDistribution(choices)
    if name == "lr_schedule":
        raise ValueError(f"must be categorical over {', '.join(LR_SCHEDULES)}")
    if "low" not in spec or "high" not in spec:
        raise ValueError("needs low and high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"log must be true or false, not {log!r}")
    if kind == "int":
        if name not in INT_PARAMS:
            raise ValueError(f"{name} is a real number: use type = \"float\"")
        low, high = _int(spec["low"], "low"), _int(spec["high"], "high")
        step = _int(spec.get("step", 1), "step")
        if log and step != 1:
            raise ValueError("log = true takes no step")
        dist: BaseDistribution = IntDistribution(low=low, high=high, log=log, step=step)
    else:
        if name in INT_PARAMS:
            raise ValueError(f"{name} is a whole number: use type = \"int\"")
        low, high = _finite(spec["low"], "low"), _finite(spec["high"], "high")
        step = spec.get("step")
        if step is not None:
            step = _finite(step, "step")
            if step <= 0 or log:
                raise ValueError("step must be above 0, and log = true takes no step")
        if low <= 0:
            raise ValueError(f"low must be above 0 ({name} is positive), not {low!r}")
        dist = FloatDistribution(low=low, high=high, log=log, step=step)
    if low > high:
        raise ValueError(f"low {low!r} is above high {high!r}")
    return dist


def _check_value(name: str, value: Any) -> None:
    """One categorical choice: a scalar the trainer can take for `name`."""
    if isinstance(value, (dict, list)):
        raise ValueError(f"choice {value!r} is not a single value")
    if name == "lr_schedule":
        if value not in LR_SCHEDULES:
            raise ValueError(f"choice {value!r} is not one of {', '.join(LR_SCHEDULES)}")
    elif name in INT_PARAMS:
        _int(value, "choice")
    else:
        _positive(value, "choice")


PRESET_KEYS = {"name", "title", "epochs", "batch_size", "baseline", "points"}
POINT_KEYS = {"config", "latent_dim", "base_channels", "beta", "lr", "report"}
REPORT_KEYS = {"val_loss", "recon_loss", "kl", "time_s", "params", "params_text"}  # the figures a grid table sets beside its own


def _known_keys(table: Any, known: set[str], where: str) -> None:
    """A misspelt key (`pointz`, `latnet_dim`) is refused, not silently left out."""
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table, not {table!r}")
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _report(figures: dict[str, Any]) -> dict[str, Any]:
    """A point's report figures: finite numbers, and the parameter count as the report prints it."""
    out: dict[str, Any] = {k: _finite(v, f"report {k}") for k, v in figures.items() if k != "params_text"}
    if "params_text" in figures:
        out["params_text"] = str(figures["params_text"])
    return out


def _int(value: Any, what: str) -> int:
    """A whole number of at least 1 (2.9 is refused, not cut to 2)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ValueError(f"{what} must be a whole number, not {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be at least 1, not {value!r}")
    return int(value)


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return float(value)


def _positive(value: Any, what: str) -> float:
    number = _finite(value, what)
    if number <= 0:
        raise ValueError(f"{what} must be above 0, not {value!r}")
    return number
