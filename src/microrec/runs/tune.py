"""Fair tuning with Optuna: the study's storage, and a sweep's best trial kept as a config.

`python src/train.py -m hparams_search=<model> data=<data>` runs one Optuna study through
Hydra's sweeper (conf/tuning/optuna.yaml: seeded TPE, the same budget for every model,
validation MRR@20 the only objective, test never evaluated); `python src/tune.py <sweep>`
writes its best trial to `conf/tuned/<model>/<data>.yaml`, which the `*_tuned` rows of the
results table load (conf/row/).
"""

from __future__ import annotations

import logging
import subprocess
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from microrec.errors import ConfigError
from microrec.files import atomic_write
from microrec.runs.folders import CONFIG, HYDRA, job_folders, job_id, read_metrics
from microrec.runs.naming import SQLITE, register_resolvers

RESULTS = "optimization_results.yaml"  # what Hydra's Optuna sweeper leaves when it finishes


def check_tuned(tuned: DictConfig | None, data: str) -> None:
    """Stop a `*_tuned` row whose conf/tuned/<model>/<data>.yaml does not exist (the row
    loads it as optional, so only the study that file would add is missing)."""
    if tuned is None or tuned.get("study") is not None:
        return
    model = tuned.get("model")
    raise ConfigError(f"no tuned config for {model} on {data} (conf/tuned/{model}/{data}.yaml): "
                      f"run python src/train.py -m hparams_search={model} data={data}, then "
                      "python src/tune.py <folder>.")


def _storage(hydra: DictConfig) -> tuple[str, Path | None]:
    """A sweep's storage URL, a relative SQLite path (given on the command line) taken from
    the sweep's working directory; and that SQLite file (None for another database)."""
    register_resolvers()  # the saved config names its storage through `sqlite_url`
    url = str(hydra.sweeper.storage)
    if not url.startswith(SQLITE):
        return url, None
    path = Path(hydra.runtime.cwd) / url[len(SQLITE):]  # an absolute path stays as it is
    return SQLITE + str(path), path


def _relative(path: Path, cwd: str) -> str:
    """`path` relative to the folder the sweep ran from where it lies inside it, so that a
    kept config names no machine's absolute paths."""
    try:
        return str(Path(path).resolve().relative_to(Path(cwd).resolve()))
    except ValueError:
        return str(path)


def config_folder(hydra: DictConfig) -> Path:
    """The folder a sweep composed its configs from (conf/ of the project it ran in)."""
    return next(Path(s.path) for s in hydra.runtime.config_sources if s.provider == "main")


def _git_commit(folder: Path) -> str:
    """The commit of the project holding `folder`, marked when its working tree has changes;
    'unknown' without git."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(folder), "status", "--porcelain",
                                  "--untracked-files=no"], capture_output=True, text=True,
                                 check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if changed else "")


def keep_best(sweep: Path, conf: Path | None = None, command: str = "") -> Path:
    """Write the best trial of a finished `hparams_search` sweep to
    `<conf>/tuned/<model>/<data>.yaml` and return that path; `conf` defaults to the config
    folder the sweep composed from.

    The sweep's study must hold exactly the sweep's own trials, all finished, and no trial
    may have computed a test metric: that is what makes tuned models comparable (the same
    budget, chosen on validation only).
    """
    jobs, hydra = sweep_jobs(sweep)
    study, storage, path = load_study(sweep, hydra)
    failed = check_trials(study, storage, path, sweep, jobs)
    model, data = hydra.runtime.choices.hparams_search, hydra.runtime.choices.data
    best = study.best_trial
    job = jobs[best.number]
    monitor = str(OmegaConf.load(job / CONFIG).monitor)
    trials = len(study.trials)
    tuned = OmegaConf.create({"tuned": {
        "model": model, "study": study.study_name, "trials": trials, "monitor": monitor,
        "objective": best.value, "trial": best.number, "failed": failed,
        "run": _relative(job, hydra.runtime.cwd)}})
    for key, value in best.params.items():
        OmegaConf.update(tuned, key, value, force_add=True)

    # the sweep's command: what every trial shared (the searched values aside)
    fixed = [str(o) for o in hydra.overrides.task if str(o).split("=")[0] not in best.params]
    fixed += [str(o) for o in hydra.overrides.hydra if not str(o).startswith("hydra.mode=")]
    conf = config_folder(hydra) if conf is None else conf
    header = [
        "# @package _global_",
        f"# The best of {trials} Optuna trial{'s' * (trials != 1)} of {model} on "
        f"{data}: {monitor} {best.value:.4f} (trial {best.number})"
        + (f"; failed (diverged): trial {', '.join(map(str, failed))}." if failed else "."),
        f"# Study {study.study_name} in "
        f"{storage if path is None else SQLITE + _relative(path, hydra.runtime.cwd)}.",
        f"# Sweep: python src/train.py -m {' '.join(fixed)}",
        f"# Written {datetime.now().isoformat(timespec='seconds')} by {command or 'keep_best'}"
        f" at commit {_git_commit(conf)}.",
        f"# Loaded by conf/row/{model}_tuned.yaml (docs/baselines.md, \"Tuning\").",
    ]
    out = conf / "tuned" / model / f"{data}.yaml"
    text = "\n".join(header) + "\n" + OmegaConf.to_yaml(tuned)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    return out


def sweep_jobs(sweep: Path) -> tuple[dict[int, Path], DictConfig]:
    """A finished `hparams_search` sweep's job folders by Hydra job number, and the Hydra
    config of its jobs."""
    if not sweep.is_dir():
        raise ConfigError(f"no sweep folder at {sweep}.")
    if not (sweep / RESULTS).is_file():
        raise ConfigError(f"{sweep} holds no {RESULTS}: pass the folder of a finished "
                          "python src/train.py -m hparams_search=<model> sweep.")
    jobs = {job_id(job)[0]: job for job in job_folders(sweep)}  # by Hydra job number
    jobs.pop(None, None)
    hydra = OmegaConf.load(next(iter(jobs.values())) / HYDRA).hydra
    if hydra.runtime.choices.get("hparams_search") is None:
        raise ConfigError(f"{sweep} is not an hparams_search sweep (its jobs have no "
                          "hparams_search choice).")
    return jobs, hydra


def load_study(sweep: Path, hydra: DictConfig):
    """The sweep's Optuna study, its storage URL and SQLite file (None for another database)."""
    name = str(hydra.sweeper.study_name)
    storage, path = _storage(hydra)
    if path is not None and not path.is_file():
        raise ConfigError(f"the study of {sweep} is gone: no {path}.")

    import optuna  # only here: src/train.py should not pay its import

    optuna.logging.set_verbosity(logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=storage), storage, path
    except KeyError:
        raise ConfigError(f"{storage} holds no study {name}.") from None


def check_trials(study, storage: str, path: Path | None, sweep: Path,
                 jobs: dict[int, Path]) -> list[int]:
    """Refuse a study that is not exactly the sweep's finished trials, or a trial that
    computed a test metric; return the numbers of the failed (diverged) trials."""
    import optuna

    trials, name = study.trials, study.study_name
    # a failed trial (one that diverged) spent its share of the budget like any other
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    finished = [t for t in trials if t.state in ended]
    failed = [t.number for t in trials if t.state == optuna.trial.TrialState.FAIL]
    if len(finished) != len(trials) or sorted(t.number for t in trials) != sorted(jobs):
        raise ConfigError(
            f"study {name} in {storage} holds {len(trials)} trials ({len(finished)} finished) "
            f"where {sweep} ran {len(jobs)}: every model gets one sweep's budget, so delete "
            f"{path or 'the study'} and run the sweep again.")
    for trial in trials:
        job = jobs[trial.number]
        overrides = {str(o) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")}
        if not {f"{k}={v}" for k, v in trial.params.items()} <= overrides:
            raise ConfigError(f"trial {trial.number} of study {name} is not {job}: that study "
                              "holds another sweep's trials; delete it and run the sweep again.")
        if trial.number in failed:
            continue  # no metrics.json
        metrics = read_metrics(job) or {}
        if tested := sorted(k for k in metrics if k.startswith("test/")):
            raise ConfigError(f"{job} computed {tested[0]}: a tuning trial must never see "
                              "test (test=false, as conf/tuning/optuna.yaml sets); run the "
                              "sweep again without test=true.")
    return failed
