"""Checkpoints on the Hugging Face Hub: resolve ``org/name`` to a local folder, push one there.

``LexVLA.from_pretrained("org/name", revision=...)`` and every ``--checkpoint org/name`` (also
``org/name@revision``) go through :func:`resolve_checkpoint`: a local folder wins, otherwise the
id is fetched with ``huggingface_hub.snapshot_download`` into the standard hub cache
(``HF_HUB_CACHE``, ``~/.cache/huggingface/hub``), so a second load is offline, and with
``HF_HUB_OFFLINE=1`` only the cache is used. The snapshot is an ordinary checkpoint folder
(``model.checkpoint``), loaded and checked like any other.

:func:`push_to_hub` (``lexvla model push``) uploads a checkpoint folder with a generated model
card (``README.md``: config, vocabulary, training data and metrics when the folder came from a
training run). :func:`plan_push` builds the file list and the card without the network; the
network is touched only by :func:`upload`, one function, which tests replace.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, read_checkpoint_meta
from .query_table import FILE as QUERY_TABLE

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
TRAINING_STATE = "training_state.pt"  # optimiser state of a training checkpoint: not uploaded
CARD = "README.md"
Files = dict[str, Path | bytes]


def split_revision(spec: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``); anything else -> (spec, None)."""
    name, sep, revision = spec.partition("@")
    return (name, revision) if sep and revision and HUB_ID.fullmatch(name) else (spec, None)


def is_hub_id(spec: str | Path) -> bool:
    """``org/name`` (optionally ``@revision``) that is not an existing local path."""
    text = str(spec)
    if Path(text).exists():
        return False
    return HUB_ID.fullmatch(split_revision(text)[0]) is not None


def resolve_checkpoint(
    spec: str | Path, revision: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """A local checkpoint folder for ``spec``: the folder itself, or the hub id's cached snapshot."""
    if not is_hub_id(spec):
        return Path(spec)
    repo_id, given = split_revision(str(spec))
    revision = revision or given
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise CheckpointError(
            f"checkpoint {repo_id!r}{f' at revision {revision!r}' if revision else ''} is not in "
            f"the local Hugging Face cache and the hub cannot be reached ({type(exc).__name__}); "
            "download it once with network access (unset HF_HUB_OFFLINE), or pass a local folder"
        ) from exc
    except HfHubHTTPError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot fetch checkpoint {repo_id!r} from the hub: {first}") from exc
    return Path(str(folder))


# --- pushing ----------------------------------------------------------------------------------
def _local_bases(config: Any) -> list[str]:
    """Base model locations that only exist on this machine (absolute paths)."""
    found = [config.text.base, config.text.tokenizer, config.image.base]
    return [b for b in found if b is not None and Path(b).is_absolute()]


def _training_facts(root: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(training config, last evaluation at or before this checkpoint's step), when known."""
    train_config = None
    if (root / "train_config.json").is_file():
        try:
            train_config = json.loads((root / "train_config.json").read_text())
        except json.JSONDecodeError:
            train_config = None
    match = re.fullmatch(r"step-(\d+)", root.name)
    metrics_file = root.parent.parent / "metrics.jsonl"
    evaluation = None
    if match and metrics_file.is_file():
        step = int(match.group(1))
        for line in metrics_file.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "eval" in record and int(record.get("step", -1)) <= step:
                evaluation = {"step": record["step"], **record["eval"]}
    return train_config, evaluation


def model_card(root: Path, repo_id: str) -> str:
    """The README.md of a pushed checkpoint: what it is, how to load it, what is known of it."""
    meta, config = read_checkpoint_meta(root)
    vocabulary = json.loads((root / "vocabulary.json").read_text())
    train_config, evaluation = _training_facts(root)
    threshold = config.sparsity.threshold
    lines = [
        "---",
        "library_name: lexvla",
        "tags: [lexvla, sparse-retrieval, image-text-retrieval, interpretability]",
        "pipeline_tag: feature-extraction",
        "---",
        f"# {repo_id}",
        "",
        "A LexVLA checkpoint: images and texts become sparse vectors over "
        f"{vocabulary['size']:,} words of the Llama 2 vocabulary, so every search score splits "
        "into per-word contributions.",
        "",
        "```python",
        "from model import LexVLA",
        f'model = LexVLA.from_pretrained("{repo_id}")',
        "```",
        "",
        f"or `lexvla serve --checkpoint {repo_id} --index ...`.",
        "",
        "## Model",
        f"- checkpoint id: `{meta['checkpoint_id']}` (created {meta.get('created', 'unknown')})",
        f"- text: `{config.text.base}` ({config.text.train_mode}"
        + (f", LoRA rank {config.text.lora_rank}" if config.text.train_mode == "lora" else "")
        + ")",
        f"- image: `{config.image.base}` ({'trained' if config.image.train_backbone else 'frozen'}"
        f"), {config.image.image_size} px",
        f"- vocabulary: {vocabulary['size']:,} words, rule `{vocabulary.get('rule')}`, "
        f"hash `{vocabulary['hash'][:12]}`",
        f"- sparsity: threshold {'1/sqrt(V)' if threshold is None else threshold}"
        + (f", top-{config.sparsity.top_k}" if config.sparsity.top_k else ""),
        "- query table (the `table` query mode, no language model): "
        + ("included" if (root / QUERY_TABLE).is_file() else "none"),
        "",
        "## Training",
    ]
    if train_config is None:
        lines.append("Unknown: this folder has no train_config.json.")
    else:
        data = train_config.get("data", {})
        lines += [
            f"- data: `{data.get('train', 'unknown')}`",
            f"- steps: {train_config.get('steps')}, batch size {train_config.get('batch_size')}",
        ]
    lines += ["", "## Evaluation"]
    if evaluation is None:
        lines.append("No evaluation was logged for this checkpoint.")
    else:
        lines += ["```json", json.dumps(evaluation, indent=1, sort_keys=True), "```"]
    lines += ["", "## Configuration", "```json", config.to_json(), "```", ""]
    return "\n".join(lines)


def plan_push(checkpoint: str | Path, repo_id: str, include_training_state: bool = False) -> Files:
    """Every file to upload (path in the repository -> local file or bytes), card included."""
    root = Path(checkpoint)
    if not HUB_ID.fullmatch(repo_id):
        raise ValueError(f"{repo_id!r} is not a hub repository id (expected 'org/name')")
    _, config = read_checkpoint_meta(root)
    local = _local_bases(config)
    if local:
        raise CheckpointError(
            f"{root} names base models by local path ({', '.join(local)}); nobody else can load "
            "it from the hub. Name the bases by hub id in the config, or save with "
            "embed_bases=True"
        )
    files: Files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if name == CARD or (name == TRAINING_STATE and not include_training_state):
            continue
        files[name] = path
    files[CARD] = model_card(root, repo_id).encode()
    return files


def upload(
    repo_id: str,
    files: Mapping[str, Path | bytes],
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload LexVLA checkpoint",
) -> str:
    """The one network call: create the repository (and branch) if needed, commit ``files``."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    operations = [
        CommitOperationAdd(
            path_in_repo=name, path_or_fileobj=data if isinstance(data, bytes) else str(data)
        )
        for name, data in files.items()
    ]
    info = api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision)
    return str(info.commit_url)


def push_to_hub(
    checkpoint: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload LexVLA checkpoint",
    include_training_state: bool = False,
) -> str:
    """Upload a checkpoint folder with its model card; returns the commit URL."""
    files = plan_push(checkpoint, repo_id, include_training_state)
    return upload(
        repo_id,
        files,
        revision=revision,
        private=private,
        token=token,
        commit_message=commit_message,
    )
