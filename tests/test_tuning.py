"""Fair tuning: hparams_search configs, a tiny Optuna study end to end, src/tune.py and the
tuned rows that load its output."""

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from microrec.errors import ConfigError
from microrec.reports.results import row_of
from microrec.runs.folders import HYDRA, job_folders
from microrec.runs.train import train
from microrec.runs.tune import check_tuned, keep_best

SEARCHES = sorted(p.stem for p in (ROOT / "conf" / "hparams_search").glob("*.yaml"))
TINY_DATA = ["data.source.n_sessions=600", "data.source.n_items=60",
             "data.source.n_categories=6", "data.batch_size=64"]


def compose_job(overrides: list[str], conf: Path | None = None):
    """One job's config with its Hydra node, as a running job sees it (HydraConfig set)."""
    extra = [f"hydra.searchpath=[file://{conf}]"] if conf else []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, *extra], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture(autouse=True)
def _no_hydra_config_left():
    yield
    HydraConfig.instance().cfg = None


def test_every_search_shares_the_budget_and_searches_its_models_own_keys(tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)  # the storage's folder is made where the sweep runs
    assert SEARCHES == ["embsr", "gru4rec", "hup", "mkmsr", "narm", "repeatnet", "rib",
                        "sasrec"]
    budgets = set()
    for name in SEARCHES:
        cfg = compose_job([f"hparams_search={name}", f"cache_dir={tmp_path}"])
        sweeper = cfg.hydra.sweeper
        budgets.add((sweeper.n_trials, sweeper.n_jobs, sweeper.sampler._target_,
                     sweeper.sampler.seed, sweeper.direction, cfg.trainer.max_epochs))
        assert cfg.hydra.runtime.choices["hydra/sweeper"] == "optuna"
        assert sweeper.study_name == f"{name}_synthetic"
        assert sweeper.storage == f"sqlite:///{tmp_path}/outputs/optuna/{name}_synthetic.db"
        assert (tmp_path / "outputs" / "optuna").is_dir()
        assert (cfg.test, list(cfg.predictions), cfg.monitor) == (False, [], "val/mrr@20")
        assert cfg.callbacks.progress is None and "CSVLogger" in cfg.logger._target_
        assert cfg.hydra.runtime.choices.model == name
        for key in sweeper.params:  # a misspelt key would only fail inside a trial
            assert OmegaConf.select(cfg, key, default="absent") != "absent", (name, key)
        assert 5 <= len(sweeper.params) <= 6, name  # comparable search spaces
        if name == "gru4rec":  # tuning must not turn GRU4Rec into another model
            assert (cfg.model.attention, cfg.model.features, cfg.model.init) == \
                (False, "sku", "random")
            assert not {"model.attention", "model.features", "model.init"} & set(sweeper.params)
    assert budgets == {(8, 1, "optuna.samplers.TPESampler", 0, "maximize", 8)}


def test_every_search_has_a_tuned_row_in_experiment_tuned_and_in_the_table():
    params = compose_job(["experiment=tuned"]).hydra.sweeper.params
    rows = params.row.split(",")
    assert {f"{name}_tuned" for name in SEARCHES} <= set(rows)
    assert {"stan", "rib_tuned_sku", "rib_tuned_sku_act", "rib_tuned_sku_dwell"} <= set(rows)
    for name in ("hup", "mkmsr", "embsr"):  # each micro-behavior model's full against its own sku
        sku = compose_job([f"+row={name}_tuned_sku", "data=jd_computers"])
        assert f"{name}_tuned_sku" in rows and row_of(sku)[0] == "sku"
        assert sku.hydra.runtime.choices.tuned == f"{name}/jd_computers"
    untuned_rows = {"rib": "rib_re_tied_nb_tr_full", "narm": "narm_sku", "sasrec": "sasrec_sku",
                    "repeatnet": "repeatnet_sku", "gru4rec": "gru4rec",
                    "mkmsr": "mkmsr_full", "embsr": "embsr_full",
                    "hup": "hup_full"}  # the same settings
    for name in SEARCHES:
        untuned = compose_job([f"+row={untuned_rows[name]}", "data=jd_computers"])
        cfg = compose_job([f"+row={name}_tuned", "data=jd_computers"])
        assert cfg.hydra.runtime.choices.tuned == f"{name}/jd_computers"
        data_type, model = row_of(cfg)
        assert (data_type, model) == (row_of(untuned)[0], row_of(untuned)[1] + " (tuned)")
        assert untuned.table.order < cfg.table.order


def test_the_untuned_comparison_runs_rib_with_the_tuned_ribs_output_layer():
    """experiment=untuned (a log without studies) compares RIB's design at default
    hyperparameters: its RIB rows carry what conf/tuning/rib_fixed.yaml fixes, on sku and
    full."""
    fixed = OmegaConf.load(ROOT / "conf" / "tuning" / "rib_fixed.yaml").model
    rows = compose_job(["experiment=untuned"]).hydra.sweeper.params.row.split(",")
    rib_rows = [r for r in rows if r.startswith("rib_re")]
    assert len(rib_rows) == 2
    features = set()
    for row in rib_rows:
        cfg = compose_job([f"+row={row}", "data=jd_computers"])
        assert cfg.model.head == "repeat_explore"
        assert {k: cfg.model[k] for k in fixed} == dict(fixed)
        features.add(cfg.features.name)
    assert features == {"sku", "full"}


def test_the_rib_study_and_its_tuned_rows_compose_the_output_layer_it_holds_fixed():
    """conf/tuning/rib_fixed.yaml is the one place that fixes the tuned RIB's output layer:
    the study and every rib_tuned* row compose with its head, tied and both experts."""
    fixed = OmegaConf.load(ROOT / "conf" / "tuning" / "rib_fixed.yaml")
    assert list(fixed.defaults) == [{"override /head": "repeat_explore"}]
    assert (fixed.model.tied, fixed.model.neighbours, fixed.model.transitions) == (True, 100, 100)
    jobs = {"hparams_search=rib": "full", "+row=rib_tuned": "full",
            **{f"+row=rib_tuned_{f}": f for f in ("sku", "sku_act", "sku_dwell")}}
    assert {f"+row={p.stem}" for p in (ROOT / "conf" / "row").glob("rib_tuned*.yaml")} == \
        set(jobs) - {"hparams_search=rib"}
    for job, features in jobs.items():
        cfg = compose_job([job, "data=jd_computers"])
        assert (cfg.hydra.runtime.choices.head, cfg.head.name, cfg.model.head) == \
            ("repeat_explore",) * 3, job
        assert (cfg.model.tied, cfg.model.neighbours, cfg.model.transitions) == \
            (True, 100, 100), job
        assert (cfg.features.name, cfg.hydra.runtime.choices.model) == (features, "rib"), job


def test_a_missing_tuned_config_is_one_sentence_before_any_data_is_read(tmp_path):
    # no study has been kept for OTTO (conf/tuned/ holds the JD samples' only)
    assert not (ROOT / "conf" / "tuned" / "narm" / "otto.yaml").exists()
    cfg = compose_job(["+row=narm_tuned", "data=otto", "logger=none",
                       f"run_dir={tmp_path}", "data.source.path=/nowhere"])
    assert "study" not in cfg.tuned  # the optional tuned file was not found
    message = ("no tuned config for narm on otto (conf/tuned/narm/otto.yaml): "
               "run python src/train.py -m hparams_search=narm data=otto, then "
               "python src/tune.py <folder>.")
    with pytest.raises(ConfigError) as e:
        train(cfg)  # data.source.path=/nowhere: reading the data would raise another error
    assert str(e.value) == message
    check_tuned(None, "otto")  # an untuned run passes


def test_a_kept_study_is_loaded_by_its_row():
    """The committed tuned configs load through the rows (conf/tuned/narm/jd_computers.yaml)."""
    cfg = compose_job(["+row=narm_tuned", "data=jd_computers"])
    kept = OmegaConf.load(ROOT / "conf" / "tuned" / "narm" / "jd_computers.yaml")
    assert cfg.tuned.study == kept.tuned.study == "narm_jd_computers"
    assert all(cfg.model[key] == value for key, value in kept.model.items())


def test_test_predictions_without_testing_are_refused(tmp_path):
    cfg = compose_job(["test=false", "predictions=[test]", "logger=none",
                       f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="with test=false: a run that never evaluates"):
        train(cfg)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 3-trial study of NARM on tiny synthetic data, run as a user runs it, from `cwd`.

    Its learning rate is searched among 1e-3 and 1e30, so that trials 0 and 2 (as the seeded
    sampler draws them) diverge."""
    cwd = tmp_path_factory.mktemp("tune")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(cwd), OMP_NUM_THREADS="1")  # one thread: tiny models, shared CPUs
    done = subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), "-m", "hparams_search=narm",
         "hydra.sweeper.n_trials=3", "hydra.sweeper.params={model.lr:'choice(0.001,1e30)'}",
         "trainer.max_epochs=1", *TINY_DATA,
         f"hydra.sweep.dir={cwd / 'sweep'}", f"cache_dir={cwd / 'cache'}"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd


def trials_on_disk(sweep: Path) -> list[tuple[dict, dict]]:
    """(overrides as key -> value text, metrics) of every job folder, read without Optuna."""
    found = []
    for job in job_folders(sweep):
        overrides = dict(str(o).split("=", 1) for o in
                         OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        metrics = job / "metrics.json"  # none for a trial that diverged
        found.append((overrides, json.loads(metrics.read_text()) if metrics.is_file() else None))
    return found


def test_a_study_keeps_its_best_trial_as_a_config_that_a_tuned_row_loads(study, capsys):
    db = study / "outputs" / "optuna" / "narm_synthetic.db"
    assert db.is_file()  # the default storage, its folder made by the sweep
    trials = optuna.load_study(study_name="narm_synthetic", storage=f"sqlite:///{db}").trials
    # a diverged trial is failed, never a value (its NaN would have ranked every target 0)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "FAIL"]
    assert [t.params["model.lr"] for t in trials] == [1e30, 0.001, 1e30]
    on_disk = trials_on_disk(study / "sweep")
    assert len(on_disk) == 3 and on_disk[0][1] is None and on_disk[2][1] is None
    for job in job_folders(study / "sweep"):
        assert job.name.split("_", 1)[1].startswith("model.lr="), job.name
    for trial, (overrides, metrics) in zip(trials, on_disk, strict=True):
        assert {k: overrides[k] for k in trial.params} == \
            {k: str(v) for k, v in trial.params.items()}
        if metrics is not None:
            assert not [k for k in metrics if k.startswith("test")]  # test never computed
            assert metrics["val/mrr@20"] == trial.value  # the objective: validation MRR@20
    best_overrides, best_metrics = on_disk[1]

    tune = runpy.run_path(str(ROOT / "src" / "tune.py"))["main"]
    OmegaConf.clear_resolver("sqlite_url")  # as in a fresh process: tune.py composes nothing
    conf = study / "conf"
    assert tune([str(study / "sweep"), "--conf", str(conf)]) == 0
    out = conf / "tuned" / "narm" / "synthetic.yaml"
    assert capsys.readouterr().out == f"written: {out}\n"
    text = out.read_text()
    assert text.startswith("# @package _global_\n# The best of 3 Optuna trials of narm on "
                           "synthetic: val/mrr@20 ")
    assert "(trial 1); failed (diverged): trial 0, 2.\n" in text
    # paths relative to where the sweep ran: a kept config names no machine's folders
    assert "\n# Study narm_synthetic in sqlite:///outputs/optuna/narm_synthetic.db.\n" in text
    sweep_line = next(line for line in text.splitlines() if line.startswith("# Sweep: "))
    assert sweep_line.startswith("# Sweep: python src/train.py -m hparams_search=narm ")
    assert "trainer.max_epochs=1" in sweep_line and "hydra.sweeper.n_trials=3" in sweep_line
    tuned = OmegaConf.load(out)
    assert tuned.tuned.objective == best_metrics["val/mrr@20"]
    assert (tuned.tuned.study, tuned.tuned.trials, tuned.tuned.model, tuned.tuned.failed) == \
        ("narm_synthetic", 3, "narm", [0, 2])
    assert tuned.tuned.run == str(job_folders(study / "sweep")[1].relative_to(study))
    searched = {k: v for k, v in best_overrides.items() if k.startswith("model.")}
    assert len(searched) == 6
    assert {k: str(OmegaConf.select(tuned, k)) for k in searched} == searched
    assert not list(out.parent.glob(".*.tmp"))

    cfg = compose_job(["+row=narm_tuned", *TINY_DATA], conf=conf)
    for key, value in searched.items():
        assert str(OmegaConf.select(cfg, key)) == value
    assert cfg.model._target_ == "microrec.models.narm.NARM" and cfg.test
    assert cfg.tuned.objective == best_metrics["val/mrr@20"]
    assert row_of(cfg) == ("sku", "NARM (tuned)")
    check_tuned(cfg.tuned, "synthetic")  # found: no error


def copy_sweep(study: Path, to: Path) -> Path:
    """A copy of the sweep and its study whose jobs name `to` as their working directory."""
    shutil.copytree(study / "sweep", to / "sweep")
    shutil.copytree(study / "outputs", to / "outputs")
    for job in job_folders(to / "sweep"):
        hydra = OmegaConf.load(job / HYDRA)
        hydra.hydra.runtime.cwd = str(to)
        OmegaConf.save(hydra, job / HYDRA)
    return to / "sweep"


def test_a_study_with_more_trials_than_its_sweep_is_refused(study, tmp_path):
    sweep = copy_sweep(study, tmp_path)
    db = f"sqlite:///{tmp_path / 'outputs' / 'optuna' / 'narm_synthetic.db'}"
    extra = optuna.load_study(study_name="narm_synthetic", storage=db)
    searched = optuna.distributions.CategoricalDistribution((0.001, 1e30))  # the fixture's
    extra.tell(extra.ask({"model.lr": searched}),
               0.9)  # an earlier sweep's trial: more budget than the other models had
    with pytest.raises(ConfigError, match="holds 4 trials .4 finished. where .* ran 3: every "
                                          "model gets one sweep's budget, so delete"):
        keep_best(sweep, tmp_path / "conf")
    assert not (tmp_path / "conf").exists()


def test_a_trial_that_computed_test_metrics_is_refused(study, tmp_path):
    sweep = copy_sweep(study, tmp_path)
    job = job_folders(sweep)[1]
    metrics = json.loads((job / "metrics.json").read_text())
    (job / "metrics.json").write_text(json.dumps({**metrics, "test/mrr@20": 0.5}))
    with pytest.raises(ConfigError, match="computed test/mrr@20: a tuning trial must never"):
        keep_best(sweep, tmp_path / "conf")


def test_tune_errors_are_one_line(tmp_path, capsys):
    tune = runpy.run_path(str(ROOT / "src" / "tune.py"))["main"]
    with pytest.raises(SystemExit, match="1"):
        tune([str(tmp_path / "nowhere")])
    assert capsys.readouterr().err == f"error: no sweep folder at {tmp_path / 'nowhere'}.\n"
    with pytest.raises(SystemExit, match="1"):
        tune([str(tmp_path)])
    assert capsys.readouterr().err == (
        f"error: {tmp_path} holds no optimization_results.yaml: pass the folder of a finished "
        "python src/train.py -m hparams_search=<model> sweep.\n")


def test_the_tuned_comparison_trains_as_long_as_the_studies_did():
    study = compose_job(["hparams_search=narm"])
    table = compose_job(["experiment=tuned", "row=narm_tuned"])
    assert table.trainer.max_epochs == study.trainer.max_epochs
    assert table.callbacks.early_stopping.patience == study.callbacks.early_stopping.patience
