"""The "offline" provider: the explainer model runs inside this process.

Engines: with CUDA and vllm installed, vLLM's in-process engine; for a local .gguf model with
llama-cpp-python importable, llama.cpp (one prompt at a time, far faster on CPU than
transformers); otherwise batched transformers generation (CPU or GPU). Concurrent `generate` calls
land in a queue; one background task takes what has queued up (same sampling settings, up to
--offline_batch_size prompts, sorted by length to limit padding, or by tokens for llama.cpp so
shared prefixes follow each other) and runs it as one batch in a worker thread, so the event loop
stays free and the model sees full batches. Loaded engines are kept per process, so the explain and
score stages of one CLI run share one copy of the weights.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autointerp_full.config import RunConfig
from autointerp_full.errors import MissingExtraError
from autointerp_full.llm import structured
from autointerp_full.llm.base import Completion, LLMError, TokenLogprob, Usage, check_messages

log = logging.getLogger("autointerp_full.llm")


@dataclass(frozen=True)
class SamplingKey:
    """Requests are only batched with others that sample the same way."""

    max_tokens: int
    temperature: float
    logprobs: bool
    top_logprobs: int
    schema: str | None = None  # canonical JSON of the schema the answer is constrained to


@dataclass
class _Pending:
    messages: list[dict[str, str]]
    key: SamplingKey
    future: asyncio.Future = field(repr=False)


def fit_context(ids: list[int], max_len: int, max_new: int) -> list[int]:
    """Keep the prompt's last tokens when it and the answer would not fit the context."""
    room = max(1, max_len - max_new)
    if len(ids) > room:
        log.warning(
            "offline explainer: prompt of %d tokens exceeds --explainer_model_max_len %d "
            "minus %d new tokens; keeping its last %d tokens",
            len(ids),
            max_len,
            max_new,
            room,
        )
        return ids[-room:]
    return ids


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """The prompt for a tokenizer without a chat template: 'role: content' lines."""
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


def split_answer_prefix(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """A final assistant message is the start of the answer, which the model continues
    (small models keep to a format far better when its first characters are given)."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, ""


def chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """A Hugging Face tokenizer's prompt ids: the chat template (or plain lines) opening the
    assistant turn, followed by the answer's opening when the last message holds one."""
    messages, prefix = split_answer_prefix(messages)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text + prefix, add_special_tokens=False)["input_ids"])
    return list(tokenizer(plain_prompt(messages) + prefix)["input_ids"])


def with_opening(completion: Completion, opening: str) -> Completion:
    """The completion's log-probabilities with the handed-over opening in front (logprob 0: it
    was given), so the answer's first tokens ("[", "1:") are where readers look for them."""
    if opening and completion.logprobs is not None:
        given = TokenLogprob(opening, 0.0, {opening: 0.0})
        completion.logprobs = [given, *completion.logprobs]
    return completion


class TransformersEngine:
    """Left-padded batched `model.generate`, greedy at temperature 0."""

    def __init__(self, cfg: RunConfig) -> None:
        try:
            from autointerp_full.models import load_subject_model
        except ImportError as exc:  # pragma: no cover - models.py ships with the package
            raise LLMError(f"cannot load the offline explainer: {exc}") from exc
        self.model, self.tokenizer = load_subject_model(
            cfg.explainer_model,
            device="auto",
            dtype="auto",
            token=cfg.token,
            param="explainer_model",
        )
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        limit = (
            getattr(self.model.config, "max_position_embeddings", None)
            or cfg.explainer_model_max_len
        )
        self.max_len = min(cfg.explainer_model_max_len, limit)
        self.generate_calls = 0
        self.lock = threading.Lock()  # two stages' batchers may share one engine

    def encode(self, messages: list[dict[str, str]], max_new: int) -> list[int]:
        return fit_context(chat_ids(self.tokenizer, messages), self.max_len, max_new)

    def run(self, prompts: list[list[int]], key: SamplingKey) -> list[Completion]:
        import torch

        with self.lock:
            tok = self.tokenizer
            width = max(len(p) for p in prompts)
            pad = tok.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            device = next(self.model.parameters()).device
            max_new = max(1, min(key.max_tokens, self.max_len - width))
            kwargs: dict[str, Any] = {
                "max_new_tokens": max_new,
                "pad_token_id": pad,
                "return_dict_in_generate": True,
                "output_logits": key.logprobs,
            }
            if key.temperature > 0:
                kwargs.update(do_sample=True, temperature=key.temperature, top_p=1.0, top_k=0)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            self.generate_calls += 1
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs
                )
            new = out.sequences[:, width:].cpu()
            steps = None
            if key.logprobs and out.logits is not None:
                steps = torch.stack(out.logits, dim=1).float().log_softmax(-1).cpu()  # [B, T, V]
        eos = set(_as_list(getattr(self.model.generation_config, "eos_token_id", None)))
        eos.add(tok.eos_token_id)
        results = []
        for row, prompt in enumerate(prompts):
            ids = new[row].tolist()
            n = next((i for i, t in enumerate(ids) if t in eos), len(ids))
            finish = "length" if n == len(ids) and n >= max_new else "stop"
            ids = ids[:n]
            logprobs = None
            if steps is not None:
                logprobs = []
                for i, t in enumerate(ids):
                    dist = steps[row, i]
                    top: dict[str, float] = {}
                    if key.top_logprobs > 0:
                        vals, idx = dist.topk(key.top_logprobs)
                        for v, j in zip(vals.tolist(), idx.tolist(), strict=True):
                            # distinct ids can decode alike (byte pieces): keep the likeliest
                            top.setdefault(tok.decode([j]), float(v))
                    logprobs.append(TokenLogprob(tok.decode([t]), float(dist[t]), top))
            text = tok.decode(ids, skip_special_tokens=True)
            results.append(Completion(text, len(prompt), len(ids), logprobs, finish))
        return results


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class VLLMEngine:
    """vLLM's in-process engine: it schedules the whole batch itself."""

    def __init__(self, cfg: RunConfig) -> None:
        try:
            import torch
            from vllm import LLM
        except ImportError:
            raise MissingExtraError("vllm", "vllm", "the offline vLLM explainer") from None
        tp = cfg.num_gpus or torch.cuda.device_count()
        self.llm = LLM(
            model=cfg.explainer_model,
            tensor_parallel_size=max(1, tp),
            max_model_len=cfg.explainer_model_max_len,
            seed=cfg.seed,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.max_len = cfg.explainer_model_max_len
        self.generate_calls = 0
        self.lock = threading.Lock()

    def encode(self, messages: list[dict[str, str]], max_new: int) -> list[int]:
        """As the transformers engine: the assistant turn stays open and continues the answer's
        opening (a template closing the turn would make the model start a new answer, while
        the scorer reads the opening as part of it)."""
        return fit_context(chat_ids(self.tokenizer, messages), self.max_len, max_new)

    def sampling_params(self, key: SamplingKey) -> Any:
        """vLLM SamplingParams for `key`; a schema becomes structured outputs (vLLM >= 0.12's
        StructuredOutputsParams, else the older GuidedDecodingParams)."""
        from vllm import SamplingParams

        kwargs: dict[str, Any] = {
            "max_tokens": key.max_tokens,
            "temperature": key.temperature,
            "logprobs": max(key.top_logprobs, 1) if key.logprobs else None,
        }
        if key.schema is not None:
            schema = json.loads(key.schema)
            try:
                from vllm.sampling_params import StructuredOutputsParams
            except ImportError:
                from vllm.sampling_params import GuidedDecodingParams

                kwargs["guided_decoding"] = GuidedDecodingParams(json=schema)
            else:
                kwargs["structured_outputs"] = StructuredOutputsParams(json=schema)
        return SamplingParams(**kwargs)

    def run(self, prompts: list[list[int]], key: SamplingKey) -> list[Completion]:
        from vllm import TokensPrompt

        params = self.sampling_params(key)
        with self.lock:
            self.generate_calls += 1
            outs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
            )
        results = []
        for prompt, out in zip(prompts, outs, strict=True):
            gen = out.outputs[0]
            logprobs = None
            if key.logprobs and gen.logprobs is not None:
                logprobs = []
                for t, step in zip(gen.token_ids, gen.logprobs, strict=False):
                    ranked = sorted(step.items(), key=lambda kv: -kv[1].logprob)[: key.top_logprobs]
                    top = {lp.decoded_token or "": lp.logprob for _, lp in ranked}
                    chosen = step[t]
                    logprobs.append(TokenLogprob(chosen.decoded_token or "", chosen.logprob, top))
            finish = getattr(gen, "finish_reason", None)
            results.append(Completion(gen.text, len(prompt), len(gen.token_ids), logprobs, finish))
        return results


class LlamaCppEngine:
    """llama.cpp on a local .gguf file: one sequence at a time, reusing the KV cache of the
    previous prompt's shared prefix (so prompts are run in token order, equal system prompts
    together). Log-probabilities need logits for every position (`logits_all`), which slows all
    prompts, so a second instance with it is loaded only when a request asks for them."""

    def __init__(self, cfg: RunConfig) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.path = str(Path(cfg.explainer_model).expanduser())
        self.max_len = cfg.explainer_model_max_len
        self.llm = self._load(logits_all=False)
        self.llm_logprobs: Any = None  # loaded on the first request for log-probabilities
        self.max_len = min(self.max_len, self.llm.n_ctx())
        template = self.llm.metadata.get("tokenizer.chat_template")
        self.formatter = None
        if template:
            self.formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self._special_text(self.llm.token_eos()),
                bos_token=self._special_text(self.llm.token_bos()),
            )
        self.generate_calls = 0
        self.lock = threading.Lock()  # one sequence at a time; stages may share the engine
        self.grammars: dict[str, Any] = {}  # schema JSON -> compiled LlamaGrammar

    def grammar(self, schema: str | None) -> Any:
        """The GBNF grammar for a schema (llama-cpp-python's JSON-schema converter), cached."""
        if schema is None:
            return None
        if schema not in self.grammars:
            from llama_cpp import LlamaGrammar

            self.grammars[schema] = LlamaGrammar.from_json_schema(schema, verbose=False)
        return self.grammars[schema]

    def close(self) -> None:
        """Free the native models now: llama.cpp's finalisers fail during interpreter exit."""
        for llm in (self.llm, self.llm_logprobs):
            if llm is not None:
                llm.close()
        self.llm = self.llm_logprobs = None

    def _load(self, *, logits_all: bool) -> Any:
        from llama_cpp import Llama

        return Llama(
            model_path=self.path,
            n_ctx=self.max_len,
            n_threads=os.cpu_count() or 1,
            n_batch=512,
            logits_all=logits_all,
            verbose=False,
        )

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def encode(self, messages: list[dict[str, str]], max_new: int) -> list[int]:
        """The prompt's token ids under the GGUF's own chat template (as create_chat_completion
        builds them), keeping the last tokens when it does not fit."""
        messages, prefix = split_answer_prefix(messages)
        if self.formatter is not None:
            result = self.formatter(messages=messages)
            text, add_bos = result.prompt, not result.added_special
        else:
            text, add_bos = plain_prompt(messages), True
        text += prefix
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        return fit_context(list(ids), self.max_len, max_new)

    def run(self, prompts: list[list[int]], key: SamplingKey) -> list[Completion]:
        with self.lock:
            if key.logprobs and self.llm_logprobs is None:
                self.llm_logprobs = self._load(logits_all=True)
            llm = self.llm_logprobs if key.logprobs else self.llm
            return [self._one(llm, p, key) for p in prompts]

    def _one(self, llm: Any, prompt: list[int], key: SamplingKey) -> Completion:
        self.generate_calls += 1
        out = llm.create_completion(
            prompt=prompt,
            max_tokens=max(1, min(key.max_tokens, self.max_len - len(prompt))),
            temperature=key.temperature,  # 0 is greedy
            top_p=1.0,
            top_k=0,
            min_p=0.0,
            repeat_penalty=1.0,
            logprobs=max(1, key.top_logprobs) if key.logprobs else None,
            grammar=self.grammar(key.schema),
        )
        choice = out["choices"][0]
        logprobs = None
        if key.logprobs and choice.get("logprobs"):
            lp = choice["logprobs"]
            logprobs = []
            for token, logprob, top in zip(
                lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=False
            ):
                ranked = sorted((top or {}).items(), key=lambda kv: -kv[1])[: key.top_logprobs]
                best = {t: float(v) for t, v in ranked}
                logprobs.append(TokenLogprob(token, float(logprob), best))
        usage = out["usage"]
        return Completion(
            choice["text"],
            usage["prompt_tokens"],
            usage["completion_tokens"],
            logprobs,
            choice.get("finish_reason"),
        )


Engine = TransformersEngine | VLLMEngine | LlamaCppEngine
_ENGINES: dict[tuple, Any] = {}
_ENGINES_LOCK = threading.Lock()


def _use_vllm() -> bool:
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def engine_kind(cfg: RunConfig) -> str:
    """'vllm' (CUDA and vllm), 'llama.cpp' (a local .gguf file and llama_cpp) or 'transformers'."""
    if _use_vllm():
        return "vllm"
    path = Path(cfg.explainer_model).expanduser()
    if path.suffix == ".gguf" and path.is_file() and importlib.util.find_spec("llama_cpp"):
        return "llama.cpp"
    return "transformers"


_ENGINE_CLASSES: dict[str, type] = {
    "vllm": VLLMEngine,
    "llama.cpp": LlamaCppEngine,
    "transformers": TransformersEngine,
}


def get_engine(cfg: RunConfig) -> Engine:
    """The process-wide engine for this model, loaded on first use."""
    kind = engine_kind(cfg)
    key = (cfg.explainer_model, cfg.explainer_model_max_len, kind)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            log.info("loading offline explainer %s (%s)", cfg.explainer_model, kind)
            _ENGINES[key] = _ENGINE_CLASSES[kind](cfg)
        return _ENGINES[key]


def release_engines() -> None:
    """Drop loaded offline engines (frees their memory once nothing else holds them)."""
    with _ENGINES_LOCK:
        for engine in _ENGINES.values():
            if hasattr(engine, "close"):
                engine.close()
        _ENGINES.clear()


atexit.register(release_engines)


class OfflineClient:
    """An LLMClient running the explainer in this process. See the module docstring."""

    def __init__(
        self, cfg: RunConfig, stage: str = "default", *, usage: Usage | None = None
    ) -> None:
        self.cfg = cfg
        self.stage = stage
        self.usage = usage if usage is not None else Usage()
        self.usage.stage(stage)
        self.batch_size = cfg.offline_batch_size
        # Shared with with_stage() views: queue, worker task, engine.
        self._shared: dict[str, Any] = {
            "queue": None,
            "worker": None,
            "engine": None,
            "held": [],
            "owner": self,
            "modes": structured.ModeLog(),
        }

    def __repr__(self) -> str:
        return f"OfflineClient(model={self.cfg.explainer_model!r}, stage={self.stage!r})"

    def with_stage(self, stage: str) -> OfflineClient:
        view = object.__new__(OfflineClient)
        view.__dict__.update(self.__dict__)
        view.stage = stage
        self.usage.stage(stage)
        return view

    @property
    def engine(self) -> Engine:
        if self._shared["engine"] is None:
            self._shared["engine"] = get_engine(self.cfg)
        return self._shared["engine"]

    def structured_mode(self) -> str:
        """How this engine meets a schema: "grammar" (llama.cpp), "guided" (vLLM), "prefill"
        (transformers: no constraint, the answer opening is handed over), or "prompt" (off)."""
        if self.cfg.structured_output == "off":
            return "prompt"
        kind = engine_kind(self.cfg)
        if kind == "llama.cpp":
            return "grammar"
        if kind == "vllm":
            return "guided"
        if self.cfg.structured_output == "on":
            raise structured.unsupported("the offline transformers engine")
        return "prefill"

    async def generate(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        logprobs: bool = False,
        top_logprobs: int = 0,
        schema: dict[str, Any] | None = None,
    ) -> Completion:
        """One completion; with `schema`, decoding is constrained to it where the engine can
        (then an answer opening in `messages` is dropped: the schema fixes the format)."""
        check_messages(messages)
        constrain = None
        if schema is not None:
            mode = self.structured_mode()
            self._shared["modes"].note(self.stage, mode)
            if mode in ("grammar", "guided"):
                constrain = structured.schema_key(schema)
        shared = self._shared
        if shared["queue"] is None:
            shared["queue"] = asyncio.Queue()
        if shared["worker"] is None or shared["worker"].done():
            shared["worker"] = asyncio.create_task(self._worker())
        future = asyncio.get_running_loop().create_future()
        key = SamplingKey(
            max_tokens, float(temperature), bool(logprobs), int(top_logprobs), constrain
        )
        await shared["queue"].put(_Pending(messages, key, future))
        try:
            completion: Completion = await future
        except LLMError:
            self.usage.record(self.stage, failures=1)
            raise
        self.usage.record(
            self.stage,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            requests=1,
        )
        return completion

    async def _worker(self) -> None:
        queue: asyncio.Queue = self._shared["queue"]
        held: list[_Pending] = self._shared["held"]  # dequeued, waiting for a batch of their kind
        while True:
            if not held:
                held.append(await queue.get())
            await asyncio.sleep(0)  # let callers started in the same tick enqueue too
            while not queue.empty():
                held.append(queue.get_nowait())
            key = held[0].key
            limit = 1 << 30 if isinstance(self._shared["engine"], VLLMEngine) else self.batch_size
            batch = [p for p in held if p.key == key][:limit]
            held[:] = [p for p in held if p not in batch]
            await self._run_batch(batch, key)

    async def _run_batch(self, batch: list[_Pending], key: SamplingKey) -> None:
        live = [p for p in batch if not p.future.done()]  # skip callers that were cancelled
        if not live:
            return
        try:
            results = await asyncio.to_thread(self._run_sync, [p.messages for p in live], key)
        except Exception as exc:  # the model failed: every caller in the batch gets LLMError
            err = (
                exc if isinstance(exc, LLMError) else LLMError(f"offline generation failed: {exc}")
            )
            for p in live:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        for p, r in zip(live, results, strict=True):
            if not p.future.done():
                p.future.set_result(r)

    def _run_sync(self, messages: list[list[dict[str, str]]], key: SamplingKey) -> list[Completion]:
        engine = self.engine
        if key.schema is not None:  # the constraint starts the answer; no opening to continue
            messages = [split_answer_prefix(m)[0] for m in messages]
        openings = [split_answer_prefix(m)[1] for m in messages]
        prompts = [engine.encode(m, key.max_tokens) for m in messages]
        if isinstance(engine, LlamaCppEngine):  # neighbours share the longest prefixes
            order = sorted(range(len(prompts)), key=lambda i: prompts[i])
        else:  # similar lengths pad less
            order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Completion | None] = [None] * len(prompts)
        results = self._run_split([prompts[i] for i in order], key)
        for i, completion in zip(order, results, strict=True):
            out[i] = with_opening(completion, openings[i])
        return out  # type: ignore[return-value]

    def _run_split(self, prompts: list[list[int]], key: SamplingKey) -> list[Completion]:
        """Run a batch; on out-of-memory, halve it and try again."""
        try:
            return self.engine.run(prompts, key)
        except RuntimeError as exc:
            if "out of memory" not in str(exc).lower() or len(prompts) == 1:
                raise
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(prompts) // 2
            log.warning(
                "offline explainer ran out of memory on %d prompts; splitting", len(prompts)
            )
            return self._run_split(prompts[:half], key) + self._run_split(prompts[half:], key)

    async def aclose(self) -> None:
        if self._shared["owner"] is not self:
            return
        worker = self._shared["worker"]
        if worker is not None:
            worker.cancel()
            try:
                await worker
            except (asyncio.CancelledError, Exception):
                pass
        queue = self._shared["queue"]
        left = list(self._shared["held"])
        while queue is not None and not queue.empty():
            left.append(queue.get_nowait())
        for p in left:
            if not p.future.done():
                p.future.set_exception(LLMError("offline client closed"))
        self._shared["held"].clear()
        self._shared["worker"] = None
        self._shared["queue"] = None
