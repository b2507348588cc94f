"""RecBole's side of benchmarks/peers.py: its GRU4Rec, NARM and SASRec trained on given batches.

Run by peers.py with the interpreter of a separate venv that holds RecBole 1.2.1 (its pins,
numpy<2 among them, are no dependency of microrec's), never imported by microrec:

    python3.11 -m venv .venv-recbole
    .venv-recbole/bin/pip install torch==2.13.0 'recbole==1.2.1' 'numpy<2'
    python benchmarks/peers.py --recbole-python .venv-recbole/bin/python

    .venv-recbole/bin/python benchmarks/recbole_side.py BATCHES.npz --threads 2 --warmup 2

BATCHES.npz (written by peers.py) holds `n_items` and, per batch i, `item_i` (B, T) product
ids right-padded with 0, `length_i` (B,) and `target_i` (B,); microrec's side reads the very
same file. This script prints `ready`, then reads model names (GRU4Rec, NARM, SASRec) from
stdin, one a line, and for each answers one JSON line: the sequences/s of a freshly built
model over batches warmup.. (forward, RecBole's full-softmax cross-entropy `calculate_loss`
with loss_type=CE, backward, Adam at RecBole's learning rate 0.001), timed as peers.py times
microrec's. RecBole's data loading and trainer are not used, so only the step is timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

# The sizes of microrec's rows in peers.py; the rest are RecBole 1.2.1's model defaults
# except SASRec's inner_size (RecBole's 256), set to the width as microrec's feed-forward
# network has it, so both sides do the same work.
SIZES = {
    "GRU4Rec": dict(embedding_size=64, hidden_size=128),
    "NARM": dict(embedding_size=64, hidden_size=128),
    "SASRec": dict(hidden_size=64, inner_size=64, n_layers=2, n_heads=2),
}
MAX_LEN = 50  # SASRec's learned positions, microrec's max_len


class Catalogue:
    """The one thing RecBole's sequential models ask their dataset: the item vocabulary size."""

    def __init__(self, n_items: int):
        self.n_items = n_items

    def num(self, field: str) -> int:
        return self.n_items


def load_batches(path: str) -> tuple[int, list[dict[str, torch.Tensor]]]:
    """The catalogue size and the batches as RecBole's interaction keys."""
    data = np.load(path)
    n = sum(1 for key in data.files if key.startswith("item_"))
    batches = [{"item_id_list": torch.from_numpy(data[f"item_{i}"]).long(),  # (B, T)
                "item_length": torch.from_numpy(data[f"length_{i}"]).long(),  # (B,)
                "item_id": torch.from_numpy(data[f"target_{i}"]).long()}  # (B,)
               for i in range(n)]
    return int(data["n_items"]), batches


def build(name: str, n_items: int):
    """RecBole's model `name` from a minimal Config: the sizes above, full softmax, CPU."""
    from recbole.config import Config
    from recbole.utils import get_model

    config = Config(model=name, dataset="microrec-peers", config_dict={
        **SIZES[name], "loss_type": "CE", "train_neg_sample_args": None,
        "MAX_ITEM_LIST_LENGTH": MAX_LEN, "learning_rate": 0.001, "use_gpu": False,
        "gpu_id": "", "seed": 0, "state": "WARNING", "show_progress": False})
    torch.manual_seed(0)
    return get_model(name)(config, Catalogue(n_items)), config["learning_rate"]


def train_rate(model, lr: float, batches: list[dict], warmup: int) -> tuple[float, float]:
    """Sequences/s of training steps over batches[warmup:], and the last loss."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)  # RecBole's trainer: Adam, no decay
    for i, batch in enumerate(batches):
        if i == warmup:
            started = time.perf_counter()
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)  # (), the mean cross-entropy over every item
        loss.backward()
        optimizer.step()
    seqs = sum(int(b["item_id"].numel()) for b in batches[warmup:])
    return seqs / (time.perf_counter() - started), loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("batches", help="the .npz peers.py wrote")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config would read ours as its own settings

    import recbole
    from recbole.utils import get_model

    for name in SIZES:
        get_model(name)  # imports every sequential model, SINE among them ...
    torch.autograd.set_detect_anomaly(False)  # ... whose module turns anomaly detection on
    torch.set_num_threads(args.threads)
    n_items, batches = load_batches(args.batches)
    print("ready", flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name not in SIZES:
            print(json.dumps({"error": f"unknown model '{name}': choose one of "
                                       f"{', '.join(SIZES)}."}), flush=True)
            continue
        model, lr = build(name, n_items)
        rate, loss = train_rate(model, lr, batches, args.warmup)
        print(json.dumps({"model": name, "rate": rate, "loss": loss,
                          "anomaly": torch.is_anomaly_enabled(),
                          "threads": torch.get_num_threads(), "version": recbole.__version__,
                          "torch": torch.__version__, "numpy": np.__version__}), flush=True)


if __name__ == "__main__":
    main()
