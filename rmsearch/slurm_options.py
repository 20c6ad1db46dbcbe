"""How to run a search as a SLURM job array: :class:`SlurmOptions` and site profiles.

Site profiles (partition, account, modules, venv activation, extra ``#SBATCH`` lines)
live in ``$RMSEARCH_CONFIG/profiles/NAME.toml`` (default config dir
``~/.config/rmsearch``; ``.json``, ``.yaml`` and ``.yml`` work too), see
:func:`load_profile`. :mod:`rmsearch.slurm` writes the job script from these options and
submits it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmdata.errors import RMError
from rmdata.utils import atomic_output

#: sbatch options that rmsearch sets itself and that ``extra_sbatch`` may not override.
RESERVED_SBATCH = ("--array", "-a", "--output", "-o", "--error", "-e", "--wrap", "--parsable",
                   "--chdir", "-D", "--ntasks", "-n")

_TIME_RE = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}"
                      r"|UNLIMITED|INFINITE)$")
_MEM_RE = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.,+:@=-]+$")


# --------------------------------------------------------------------------- options
@dataclass
class SlurmOptions:
    """How to run a search as a SLURM job array.

    Attributes:
        array_size: number of array tasks N (fixed for a run directory once submitted);
            ``None`` = ``ceil(nruns / 100)``, at most 1000.
        partition, account, qos: passed to ``#SBATCH`` as given (``None`` = site default).
        time: wall-time limit per task in a SLURM format (``30``, ``2:00:00``, ``1-12``).
        cpus_per_task: cores per task; one shard runs one LAMMPS process, so 1 is right
            unless the site allocates whole cores per task anyway.
        mem: memory per task, e.g. ``2G`` (``None`` = site default).
        max_concurrent: at most this many tasks run at once (``--array=...%M``).
        job_name: SLURM job name (default ``rms-<rundir name>``).
        modules: ``module load`` arguments, one per entry.
        setup: shell lines run before the task (e.g. ``source ~/venvs/rm/bin/activate``).
        extra_sbatch: further sbatch options, one per entry (``--qos=debug``).
        launcher: command put in front of the task, e.g. ``srun`` (empty = run directly).
        python: the Python that runs the task (default: the one running this code).
    """

    array_size: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    cpus_per_task: int = 1
    mem: str | None = None
    max_concurrent: int | None = None
    job_name: str | None = None
    modules: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    extra_sbatch: list[str] = field(default_factory=list)
    launcher: str = ""
    python: str | None = None

    def validate(self, source: str = "slurm options") -> SlurmOptions:
        """Check every field; raise :class:`RMError` naming ``source`` and the field (the
        option, ``--time``, for values from the command line)."""
        try:
            return self._validate(source)
        except RMError as exc:
            text = str(exc)
            if source == "command line" and text.startswith("command line: "):
                name, rest = text[len("command line: "):].split(" ", 1)
                raise RMError(f"--{name.replace('_', '-')}: {rest}") from None
            raise

    def _validate(self, source: str) -> SlurmOptions:
        for name in ("array_size", "max_concurrent"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise RMError(f"{source}: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.cpus_per_task, int) or isinstance(self.cpus_per_task, bool) \
                or self.cpus_per_task < 1:
            raise RMError(f"{source}: cpus_per_task must be a positive integer, got {self.cpus_per_task!r}")
        for name in ("partition", "account", "qos", "job_name"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not _NAME_RE.match(value)):
                raise RMError(f"{source}: {name} must be a name without spaces or quotes, got {value!r}")
        if self.time is not None and (not isinstance(self.time, str) or not _TIME_RE.match(self.time)):
            raise RMError(f"{source}: time must be a SLURM time limit (minutes, HH:MM:SS or D-HH:MM:SS), "
                          f"got {self.time!r}")
        if self.mem is not None and (not isinstance(self.mem, str) or not _MEM_RE.match(self.mem)):
            raise RMError(f"{source}: mem must be a size like 2000M or 4G, got {self.mem!r}")
        for name in ("modules", "setup", "extra_sbatch"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                raise RMError(f"{source}: {name} must be a list of non-empty strings, got {value!r}")
            if any("\n" in v for v in value):
                raise RMError(f"{source}: {name} entries must be single lines, got {value!r}")
        for line in self.extra_sbatch:
            opt = line.split("=", 1)[0].split()[0]
            if not opt.startswith("-"):
                raise RMError(f"{source}: extra_sbatch entry {line!r} is not an sbatch option "
                              "(write e.g. '--qos=debug')")
            if opt in RESERVED_SBATCH:
                raise RMError(f"{source}: extra_sbatch may not set {opt} (rmsearch sets "
                              f"{', '.join(o for o in RESERVED_SBATCH if o.startswith('--'))} itself)")
        for name in ("launcher", "python"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or "\n" in value):
                raise RMError(f"{source}: {name} must be a one-line string, got {value!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "slurm options") -> SlurmOptions:
        """Build and validate options from a mapping; unknown keys are an error."""
        if not isinstance(data, dict):
            raise RMError(f"{source}: expected a table of settings, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RMError(f"{source}: unknown setting(s) {', '.join(unknown)}; allowed: "
                          f"{', '.join(sorted(known))}")
        data = dict(data)
        for name in ("modules", "setup", "extra_sbatch"):  # a single string is one entry
            if isinstance(data.get(name), str):
                data[name] = [data[name]]
        return cls(**data).validate(source)

    def merged(self, overrides: dict[str, Any], source: str = "command line") -> SlurmOptions:
        """A copy with the non-``None`` entries of ``overrides`` replacing fields."""
        data = self.to_dict()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return SlurmOptions.from_dict(data, source)


def split_sbatch_options(text: str | None) -> list[str]:
    """Split a command-line string of sbatch options into one entry per option.

    ``"--qos=debug --constraint haswell"`` -> ``["--qos=debug", "--constraint haswell"]``.
    """
    if not text:
        return []
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise RMError(f"--extra-sbatch: cannot parse {text!r} ({exc})") from exc
    out: list[str] = []
    for tok in tokens:
        if tok.startswith("-"):
            out.append(tok)
        elif out:
            out[-1] += " " + tok
        else:
            raise RMError(f"--extra-sbatch: {text!r} must start with an option such as --qos=debug")
    return out


# -------------------------------------------------------------------------- profiles
def config_dir() -> Path:
    """The user's rmsearch config folder: ``$RMSEARCH_CONFIG``, else ``$XDG_CONFIG_HOME/rmsearch``,
    else ``~/.config/rmsearch``."""
    if os.environ.get("RMSEARCH_CONFIG"):
        return Path(os.environ["RMSEARCH_CONFIG"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "rmsearch"


PROFILE_SUFFIXES = (".toml", ".json", ".yaml", ".yml")


def find_profile(name_or_file: str | os.PathLike) -> Path:
    """The profile file for a name (``<config>/profiles/NAME.toml`` etc.) or a path."""
    text = str(name_or_file)
    path = Path(text).expanduser()
    if path.suffix in PROFILE_SUFFIXES or os.sep in text:
        if not path.is_file():
            raise RMError(f"--profile: file {path} not found")
        return path
    if not _NAME_RE.match(text):
        raise RMError(f"--profile: {text!r} is neither a profile name nor a file")
    folder = config_dir() / "profiles"
    for suffix in PROFILE_SUFFIXES:
        if (folder / f"{text}{suffix}").is_file():
            return folder / f"{text}{suffix}"
    have = sorted(p.stem for p in folder.glob("*") if p.suffix in PROFILE_SUFFIXES) if folder.is_dir() else []
    raise RMError(f"--profile: no profile {text!r} in {folder} (have: {', '.join(have) or 'none'}); "
                  f"create {folder / (text + '.toml')} or run 'rmsearch slurm profile {text} --partition ...'")


def load_profile(name_or_file: str | os.PathLike) -> SlurmOptions:
    """Read and validate a site profile (TOML, JSON or YAML; keys as in :class:`SlurmOptions`).

    Example ``~/.config/rmsearch/profiles/mycluster.toml``::

        partition = "compute"
        account = "chem123"
        time = "04:00:00"
        modules = ["python/3.11"]
        setup = ["source $HOME/venvs/rm/bin/activate"]
        extra_sbatch = ["--qos=standard"]
    """
    path = find_profile(name_or_file)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RMError(f"{path}: cannot read profile ({exc.strerror})") from exc
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(raw.decode())
        elif path.suffix == ".json":
            data = json.loads(raw)
        else:
            try:
                import yaml
            except ImportError as exc:
                raise RMError(f"{path}: YAML profiles need PyYAML ('pip install pyyaml'), "
                              "or write the profile as .toml") from exc
            data = yaml.safe_load(raw)
    except RMError:
        raise
    except Exception as exc:  # tomllib/json/yaml each raise their own parse errors
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RMError(f"{path}: not a valid {path.suffix[1:].upper()} file ({msg})") from exc
    if data is None:
        data = {}
    return SlurmOptions.from_dict(data, source=str(path))


def save_profile(name: str, options: SlurmOptions) -> Path:
    """Write ``options`` (non-default fields) as ``<config>/profiles/NAME.toml``; return the path."""
    if not _NAME_RE.match(name) or "/" in name:
        raise RMError(f"profile name {name!r} must be a plain name (letters, digits, _ . -)")
    options.validate(f"profile {name}")
    default = SlurmOptions().to_dict()
    lines = []
    for key, value in options.to_dict().items():
        if value == default[key] or value is None:
            continue
        lines.append(f"{key} = {json.dumps(value)}")  # JSON strings, ints and lists are valid TOML
    path = config_dir() / "profiles" / f"{name}.toml"
    with atomic_output(path) as tmp:
        tmp.write_text("# rmsearch SLURM site profile (keys: see 'rmsearch slurm profile --help')\n"
                       + "\n".join(lines) + "\n")
    return path
