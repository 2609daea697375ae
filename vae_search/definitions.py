"""Study definitions as data: grid presets (studies/<name>.toml) and search spaces
(studies/search.toml), read into typed objects. Nothing here knows about training."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
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
_REPO_STUDIES = Path(__file__).resolve().parent.parent / "studies"


def studies_dirs() -> list[Path]:
    """Where presets are looked up: ./studies, then the studies/ folder of this checkout."""
    dirs = [Path.cwd() / "studies", _REPO_STUDIES]
    return [d for i, d in enumerate(dirs) if d.is_dir() and d.resolve() not in [x.resolve() for x in dirs[:i]]]


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{what} {path} is not valid TOML: {e}") from None
    except OSError as e:
        raise UsageError(f"{what} {path} cannot be read: {e.strerror}") from None


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
    return sorted({p.stem for d in studies_dirs() for p in d.glob("*.toml") if _is_preset(p)})


def _is_preset(path: Path) -> bool:
    try:
        return "points" in tomllib.loads(path.read_text())
    except Exception:
        return False


def load_preset(name_or_path: str) -> Preset:
    """A preset by name (studies/<name>.toml) or by path to a .toml file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        found = [d / f"{name_or_path}.toml" for d in studies_dirs() if (d / f"{name_or_path}.toml").is_file()]
        if not found or not _is_preset(found[0]):
            raise UsageError(
                f"unknown preset {name_or_path!r}; available: {', '.join(available_presets()) or 'none'}"
                " (or give the path of a .toml file)"
            )
        path = found[0]
    raw = _read_toml(path, "preset file")
    try:
        points = tuple(
            GridPoint(
                config=int(p["config"]),
                params={
                    "latent_dim": int(p["latent_dim"]),
                    "base_channels": int(p["base_channels"]),
                    "beta": float(p["beta"]),
                    "lr": float(p["lr"]),
                },
                report=dict(p.get("report", {})),
            )
            for p in raw["points"]
        )
        preset = Preset(
            name=str(raw.get("name", path.stem)),
            title=str(raw.get("title", path.stem)),
            epochs=int(raw.get("epochs", 10)),
            batch_size=int(raw.get("batch_size", 128)),
            points=points,
            baseline=raw.get("baseline"),
            path=path,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"preset file {path} is malformed ({type(e).__name__}: {e}); see studies/b1.toml") from None
    if not points:
        raise UsageError(f"preset file {path} has no [[points]]")
    return preset


def default_space_path() -> Path:
    for d in studies_dirs():
        if (d / "search.toml").is_file():
            return d / "search.toml"
    return _REPO_STUDIES / "search.toml"


def load_space(path: Path | None = None) -> dict[str, BaseDistribution]:
    """The search space as Optuna distributions, one per trial parameter."""
    path = Path(path) if path else default_space_path()
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
        spec = raw[name]
        try:
            kind = spec["type"]
            if kind == "categorical":
                space[name] = CategoricalDistribution(list(spec["choices"]))
            elif kind == "int":
                space[name] = IntDistribution(
                    low=int(spec["low"]), high=int(spec["high"]), log=bool(spec.get("log", False)), step=int(spec.get("step", 1))
                )
            elif kind == "float":
                space[name] = FloatDistribution(
                    low=float(spec["low"]), high=float(spec["high"]), log=bool(spec.get("log", False)), step=spec.get("step")
                )
            else:
                raise ValueError(f"type must be int, float or categorical, not {kind!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"search-space file {path}: [{name}] is malformed ({type(e).__name__}: {e})") from None
    from vae_search.train import LR_SCHEDULES  # what the trainer can do

    schedules = space.get("lr_schedule")
    if schedules is not None and (not isinstance(schedules, CategoricalDistribution)
                                  or not set(schedules.choices) <= set(LR_SCHEDULES)):
        raise UsageError(f"search-space file {path}: [lr_schedule] must be categorical over {', '.join(LR_SCHEDULES)}")
    return space
