"""Shared fixtures: compose the real configs, shrink them, and point every output at tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from microrec.runs.naming import register_resolvers

register_resolvers()  # as the entry scripts do: conf/ uses job_label and sqlite_url

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

TINY = [
    "data.source.n_sessions=600",
    "data.source.n_items=60",
    "data.source.n_categories=6",
    "data.batch_size=64",
    "trainer.max_epochs=1",
    "callbacks.progress=null",
    "model.item_dim=8",
    "model.activity_dim=4",
    "model.dwell_dim=4",
    "model.hidden_size=12",
    "model.attention_size=6",
    "model.w2v_epochs=1",
]


def compose_cfg(tmp_path: Path, overrides: list[str] = (), tiny: bool = True):
    """The project's real config with `overrides`, outputs under tmp_path."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[*(TINY if tiny else []), "logger=none", f"run_dir={tmp_path}",
                       f"cache_dir={tmp_path / 'cache'}", *overrides],
        )


@pytest.fixture
def cfg_factory(tmp_path):
    return lambda *overrides, tiny=True: compose_cfg(tmp_path, list(overrides), tiny)


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    """A small synthetic data module (400 sessions, 50 products) for model-level tests."""
    from microrec.data.module import MicroDataModule
    from microrec.data.synthetic import SyntheticSource

    data = MicroDataModule(SyntheticSource(n_sessions=400, n_items=50, n_categories=5),
                           batch_size=32, eval_batch_size=64,
                           cache_dir=str(tmp_path_factory.mktemp("cache")))
    data.setup()
    return data


# -- what every neural model's tests check the same way -------------------------------------
QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)


def scores_alone_and_padded(model, ds):
    """(1, N) scores of the split's shortest example alone, and the same example's scores
    inside a batch padded to the longest input (model in eval mode)."""
    import torch

    lengths = ds.lengths()
    short, long = int(lengths.argmin()), int(lengths.argmax())
    assert lengths[short] < lengths[long]
    with torch.no_grad():
        return model(ds[[short]]), model(ds[[long, short, long]])[1:2]


def reload_after_training(model, dm, tmp_path):
    """`model` after a few training steps (put in eval mode), and its checkpoint loaded by
    its class alone (no Hydra, no data module)."""
    import pytorch_lightning as L

    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1, **QUIET)
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    model.eval()
    return type(model).load_from_checkpoint(path).eval()


def synthetic_and_pop_floor(tmp_path, n_sessions: int, batch_size: int = 128,
                            split: str = "test"):
    """A set-up data module of `n_sessions` synthetic sessions with planted sequential signal
    (100 products, 10 categories, every target evaluated) and POP's MRR@20 on `split`: the
    floor that each model's "beats POP by a wide margin" test doubles."""
    import pytorch_lightning as L

    from microrec.data.module import MicroDataModule
    from microrec.data.synthetic import SyntheticSource
    from microrec.models.pop import Pop

    dm = MicroDataModule(SyntheticSource(n_sessions=n_sessions, n_items=100, n_categories=10),
                         batch_size=batch_size, eval_batch_size=512, eval_targets="all",
                         cache_dir=str(tmp_path))
    dm.setup()
    pop = Pop(dm.n_items, dm.n_activities, dm.n_dwell)
    pop.fit(dm)
    run = L.Trainer(**QUIET).test if split == "test" else L.Trainer(**QUIET).validate
    return dm, run(pop, datamodule=dm, verbose=False)[0][f"{split}/mrr@20"]
