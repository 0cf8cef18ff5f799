"""Share a trained model the Hugging Face way: a folder with `model.safetensors` and `config.json`.

`save_pretrained(run, folder)` exports the EMA weights and the run's config (plus the tokenizer file
of a BPE text run); `from_pretrained(name)` loads such a folder, or downloads one from the Hugging Face
Hub with `huggingface_hub.snapshot_download` when `name` is a repo id. Nothing is unpickled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import RunConfig
from .errors import UserError
from .networks import Transformer
from .run import LoadedRun, load_run
from .rundir import CONFIG, SPLIT_FILES


def save_pretrained(run_dir: str | Path, folder: str | Path) -> Path:
    loaded = load_run(run_dir)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in loaded.net.state_dict().items()}
    save_file(state, folder / "model.safetensors", metadata={"format": "pt", "library": "ddlm"})
    config = {**loaded.config.to_dict(), "exported_from_step": loaded.checkpoint.step}
    (folder / CONFIG).write_text(json.dumps(config, indent=1))
    for extra in SPLIT_FILES:
        if (Path(run_dir) / extra).is_file():
            shutil.copy2(Path(run_dir) / extra, folder / extra)
    return folder


def from_pretrained(name: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, RunConfig]:
    """(network in eval mode, config) from a local folder or a Hub repo id such as "user/ddlm-acyp"."""
    folder = Path(name)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(repo_id=str(name), allow_patterns=["*.json", "*.safetensors", "*.fa"]))
        except Exception as e:  # offline, no such repo, not installed: say which
            raise UserError(f"{name}: not a local folder, and the Hub download failed ({e})") from None
    try:
        config = RunConfig.from_dict(json.loads((folder / CONFIG).read_text()))
        state = load_file(folder / "model.safetensors")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{folder}: not a ddlm model folder (config.json + model.safetensors): {e}") from None
    net = Transformer(config.net)
    net.load_state_dict(state)
    return net.to(device).eval(), config


def loaded_from_pretrained(name: str | Path, device="cpu") -> LoadedRun:
    net, config = from_pretrained(name, device)
    return LoadedRun(Path(name), config, config.build_objective(), net, None)
