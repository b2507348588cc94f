from microrec.data.schema import FEATURE_LABELS, FEATURES
from microrec.runs.naming import job_label, run_label, swept_keys


def test_only_swept_keys_name_a_job():
    argv = ["-m", "features=sku,full", "data.path=/very/long/path.csv", "split=[0.8,0.1,0.1]",
            "seed=range(0,3)", "+trainer.fast_dev_run=true"]
    assert swept_keys(argv) == {"features", "seed"}
    overrides = ["features=full", "data.path=/very/long/path.csv", "split=[0.8,0.1,0.1]",
                 "seed=2"]
    assert job_label(overrides, argv=argv) == "features=full,seed=2"
    assert job_label(["data.path=a/b"], argv=["data.path=a/b,c/d"]) == "data.path=a_b"
    assert job_label(overrides, argv=["features=full"]) == "job"


def test_a_single_run_is_named_by_its_overrides_or_else_its_folder():
    assert run_label(["data=jd_appliances", "features=sku_act"], "12-00-00-000001") == \
        "data=jd_appliances,features=sku_act"
    assert run_label([], "12-00-00-000001") == "12-00-00-000001"  # not "job"
    assert run_label(["resume=outputs/runs/x"], "x") == "x"


def test_long_labels_are_cut_with_a_hash():
    argv = ["x=" + "a" * 200 + ",b", "y=1,2"]
    one = job_label(["x=" + "a" * 200, "y=1"], argv=argv)
    two = job_label(["x=" + "a" * 200, "y=2"], argv=argv)
    assert len(one) <= 80 and len(two) <= 80 and one != two


def test_slurm_launcher_preset_composes(tmp_path):
    from conftest import ROOT
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                 f"hydra.sweep.dir={tmp_path}"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher." \
        "SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1
    assert launcher.submitit_folder == f"{tmp_path}/.submitit/%j"
    assert launcher.max_num_timeout == 3  # a timed-out job is requeued and resumes


def test_every_feature_variant_has_one_label_and_full_is_the_papers_name():
    assert FEATURE_LABELS.keys() == FEATURES.keys()
    assert len(set(FEATURE_LABELS.values())) == len(FEATURES)
    assert FEATURE_LABELS["full"] == "SKU+Micro-behaviors"  # the paper's Table 3
