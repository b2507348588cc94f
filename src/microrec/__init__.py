"""microrec: next-product recommendation from micro-behaviors (RIB, WSDM 2018).

Importing the package sets what every entry point shares (train, analyze, stats, explain,
results, the benchmarks): W&B runs offline unless WANDB_MODE says otherwise, and notices that
libraries print for their own sake, not the user's, stay quiet. MICROREC_VERBOSE=1 brings
back W&B's and Lightning's informational lines (run folders, sync hints, seed, devices,
checkpoint loading) for debugging; their warnings and errors always show.
"""

import logging
import os
import warnings

__version__ = "0.1.0"

os.environ.setdefault("WANDB_MODE", "offline")  # no account or network needed; override freely
if os.environ.get("MICROREC_VERBOSE") != "1":
    os.environ.setdefault("WANDB_SHOW_INFO", "false")  # W&B's warnings and errors still show
    for name in ("pytorch_lightning.utilities.rank_zero",  # devices, checkpoint loading, stops
                 "pytorch_lightning.accelerators.cuda",  # CUDA_VISIBLE_DEVICES per rank
                 "lightning_fabric.utilities.rank_zero",
                 "lightning_fabric.utilities.seed",  # "Seed set to 0"
                 "lightning_fabric.utilities.distributed"):  # DDP's process group per rank
        logging.getLogger(name).setLevel(logging.WARNING)

# Lightning (2.6) still builds torch's LeafSpec, which torch (2.13) deprecates: a note for
# Lightning's developers that no setting of ours can change.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                        category=FutureWarning)
# Batches are built by vectorised indexing in the main process: loader workers would not help.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Lightning advertises its own cloud logger whenever a run uses another one (or none).
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: not str(record.msg).startswith("💡 Tip:"))
# errors raised before logging is set up (e.g. by resume=) print once, as `error: ...`
logging.getLogger(__name__).addHandler(logging.NullHandler())
