"""The vLLM rollout engine: group sampling with token ids, logprobs and finish reasons; in-place weight reload.

The engine runs in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`): weights then travel to the worker as live
tensors, with no pickling and no copy to disk. In a multi-rank job every rank owns one TP=1 engine for its share
of the prompts, built with vLLM's `external_launcher` executor (as verl and TRL do under torchrun): it takes the
rank and the device index from RANK / LOCAL_RANK and joins the already-initialised torch.distributed world. The
`uni` executor would read the device index from `torch.device("cuda")` (no index) and put every rank's engine on
cuda:0. The CPU suite's 2-rank runs use the same executor.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence

from torch import Tensor

from sposd.rollout.base import SamplingCfg
from sposd.rollout.seeds import request_seeds
from sposd.types import Completion, Prompt, RolloutGroup


def _set_env(kv_cache_gb: float) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(kv_cache_gb)))))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def executor_backend(*, tensor_parallel_size: int, world_size: int) -> str:
    """vLLM's `distributed_executor_backend` for an in-process engine.

    Args:
        tensor_parallel_size: GPUs per engine.
        world_size: ranks of the torch.distributed world this process belongs to (1: none, or a world of one).

    One engine per rank of a multi-rank world: "external_launcher" (device index from LOCAL_RANK). A lone
    process: "uni", or "mp" (one worker process per GPU) when the engine spans several GPUs (`sposd eval`).
    A TP>1 engine inside a multi-rank world would need the TP peers to sample the same prompts with the same
    seed (TRL gathers them per TP group); sposd train refuses `hardware.vllm_tp > 1` at config time instead.
    """
    if world_size > 1:
        if tensor_parallel_size > 1:
            raise ValueError(
                f"a vLLM engine with tensor_parallel_size={tensor_parallel_size} inside a {world_size}-rank job is "
                "not supported: use hardware.vllm_tp=1 (one engine per GPU)"
            )
        return "external_launcher"
    return "mp" if tensor_parallel_size > 1 else "uni"


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


class VLLMEngine:
    """`RolloutEngine` backed by `vllm.LLM`.

    Args:
        model_path: HF-format directory or hub id.
        dtype: "float32" | "bfloat16" | "float16".
        max_model_len: prompt + completion token budget.
        seed: engine seed (vLLM seeds torch, numpy and random with it at start-up); every request carries its
            own seed besides (`SamplingCfg.seed`).
        device: "cpu" or "cuda" (only decides memory knobs; vLLM detects its platform itself).
        max_num_seqs: vLLM's cap on sequences in one batch (None: vLLM's default).
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        max_model_len: int = 2048,
        seed: int = 0,
        device: str = "cpu",
        kv_cache_gb: float = 1.0,
        gpu_memory_utilization: float = 0.5,
        enforce_eager: bool = True,
        tensor_parallel_size: int = 1,
        enable_sleep_mode: bool = False,
        trust_remote_code: bool = False,
        max_num_seqs: int | None = None,
    ) -> None:
        _set_env(kv_cache_gb)
        from vllm import LLM

        kwargs = dict(
            model=model_path,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            distributed_executor_backend=executor_backend(
                tensor_parallel_size=tensor_parallel_size, world_size=_world_size()
            ),
            tensor_parallel_size=tensor_parallel_size,
            trust_remote_code=trust_remote_code,
            worker_extension_cls="sposd.rollout.worker_ext.SposdWorkerExtension",
            enable_prefix_caching=True,
            # the log-probs of the distribution sampled from (after temperature, top-k/p): what the learner's
            # log softmax(z / T) is compared with at any temperature
            logprobs_mode="processed_logprobs",
            # the weight-loading bar only when vLLM's INFO lines show (verbose=true; sposd.logging.quiet_libraries)
            use_tqdm_on_load=logging.getLogger("vllm").isEnabledFor(logging.INFO),
        )
        if device == "cpu":
            # Per-request seeds give each request a torch.Generator; after a partial (chunked) prefill vLLM rewinds
            # it with Generator.set_offset, which a CPU generator does not have ("CPU Generator does not use
            # offset", vllm/v1/worker/gpu_model_runner.py in 0.32). Whole prompts only, then: nothing to rewind.
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 4096))
        if device == "cuda":
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=enable_sleep_mode)
        if max_num_seqs:
            kwargs.update(max_num_seqs=max_num_seqs)
        self._llm = LLM(**kwargs)
        self._asleep: set[str] = set()  # the sleeping tags

    @classmethod
    def from_config(cls, model_path: str, model, hardware, *, max_model_len: int, seed: int, **overrides) -> VLLMEngine:
        """An engine with the model config's dtype / remote-code choice and the hardware config's vLLM knobs
        (`overrides` replaces any of them, e.g. evaluation's own gpu_memory_utilization)."""
        kwargs = dict(
            dtype=model.dtype,
            max_model_len=max_model_len,
            seed=seed,
            device=hardware.device,
            kv_cache_gb=hardware.vllm_kv_cache_gb,
            gpu_memory_utilization=hardware.vllm_gpu_memory_utilization,
            enforce_eager=hardware.vllm_enforce_eager,
            tensor_parallel_size=hardware.vllm_tp,
            enable_sleep_mode=hardware.vllm_sleep,
            trust_remote_code=model.trust_remote_code,
            max_num_seqs=hardware.vllm_max_num_seqs,
        )
        return cls(model_path, **{**kwargs, **overrides})

    # ---- sampling ------------------------------------------------------------------------------------
    def _params(self, sampling: SamplingCfg, *, n: int, count: int) -> list:
        """One SamplingParams per prompt, each with its own seed (`sposd.rollout.seeds`): the call's seed is
        `sampling.seed`, or drawn from torch's RNG when None (a caller that seeds torch still repeats itself)."""
        import torch
        from vllm import SamplingParams

        call = sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**62, ()).item())
        return [
            SamplingParams(
                n=n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k if sampling.top_k > 0 else -1,
                min_p=sampling.min_p,
                max_tokens=sampling.max_new_tokens,
                logprobs=0 if sampling.logprobs else None,  # 0: the sampled token's own logprob
                seed=seed,
                skip_special_tokens=True,
            )
            for seed in request_seeds(call, count)
        ]

    def generate(self, prompts: Sequence[Prompt], *, n: int, sampling: SamplingCfg) -> list[RolloutGroup]:
        """Sample n completions per prompt (vLLM's `n`, sharing the prompt's prefill)."""
        if not prompts:
            return []
        outs = self._llm.generate(
            [{"prompt_token_ids": p.prompt_ids} for p in prompts],
            self._params(sampling, n=n, count=len(prompts)),
            use_tqdm=False,
        )
        return [_group(prompt, out) for prompt, out in zip(prompts, outs, strict=True)]

    def generate_stream(
        self, prompts: Sequence[Prompt], *, n: int, sampling: SamplingCfg
    ) -> Iterator[list[RolloutGroup]]:
        """Like `generate`, but yields the groups that finished at each engine step, as soon as they finish.

        All prompts are queued at once, so vLLM batches exactly as in one `generate` call; a caller can save
        finished problems while the rest still run. Closing the iterator early aborts the unfinished requests.
        """
        if not prompts:
            return
        llm = self._llm
        if not hasattr(llm, "enqueue"):  # older vLLM: no streaming, one batch
            yield self.generate(prompts, n=n, sampling=sampling)
            return
        ids = llm.enqueue(
            [{"prompt_token_ids": p.prompt_ids} for p in prompts],
            self._params(sampling, n=n, count=len(prompts)),
            use_tqdm=False,
        )
        # enqueue returns internal ids "<counter>-<suffix>"; outputs carry the external "<counter>"
        index = {rid.split("-", 1)[0]: i for i, rid in enumerate(ids)}
        pending = dict(zip(index, ids, strict=True))
        try:
            while pending and llm.llm_engine.has_unfinished_requests():
                finished = []
                for out in llm.llm_engine.step():
                    key = out.request_id.split("-", 1)[0]
                    if out.finished and pending.pop(key, None) is not None:
                        finished.append(_group(prompts[index[key]], out))
                if finished:
                    yield finished
        finally:
            if pending:
                try:
                    llm.llm_engine.abort_request(list(pending.values()), internal=True)
                except TypeError:  # a vLLM whose abort_request takes only ids
                    llm.llm_engine.abort_request(list(pending.values()))

    def sequence_logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """Score a fixed completion: vLLM's prompt_logprobs of the completion tokens (raw, temperature 1)."""
        from vllm import SamplingParams

        ids = list(prompt_ids) + list(completion_ids)
        out = self._llm.generate(
            [{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
        )[0]
        plp = out.prompt_logprobs  # position i: dict for token ids[i] (None at i=0)
        return [plp[i][ids[i]].logprob for i in range(len(prompt_ids), len(ids))]

    # ---- weights -------------------------------------------------------------------------------------
    @property
    def loads_in_place(self) -> bool:
        """Whether the worker copies each synced tensor into place as it arrives (`worker_ext.loads_in_place`): the
        sync then streams the gathered tensors without copying them first."""
        from sposd.rollout.worker_ext import loads_in_place

        cfg = self._llm.llm_engine.vllm_config
        return loads_in_place(cfg.device_config.device_type, cfg.model_config.quantization)

    def load_weights(self, named: Iterable[tuple[str, Tensor]]) -> None:
        """Stream new weights into the worker in place, then drop cached KV blocks computed with old weights."""
        self._llm.collective_rpc("sposd_reload_weights", args=(named,))
        self._llm.reset_prefix_cache()

    def sleep(self, level: int = 2) -> None:
        """Release vLLM's GPU memory while the learner trains (no-op unless built with sleep mode, i.e. on CUDA).

        Level 2 discards the weights (the next sync rewrites every one of them) and the KV cache; level 1 backs
        the weights up to pinned host memory first. `sposd.rollout.colocation.Colocation` drives the sequence.
        """
        if not self._asleep and self._llm.llm_engine.vllm_config.model_config.enable_sleep_mode:
            self._llm.sleep(level=level)
            self._asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Map back the sleeping `tags` ("weights", "kv_cache"; None: both). Waking the weights alone lets the
        sync run while the KV cache is still unmapped."""
        todo = self._asleep & set(tags or ("weights", "kv_cache"))
        if todo:
            self._llm.wake_up(tags=sorted(todo))
            self._asleep -= todo

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            del llm
            import gc

            gc.collect()


def _group(prompt: Prompt, out) -> RolloutGroup:
    """A vLLM RequestOutput (n samples of one prompt) as a RolloutGroup with token ids, logprobs, finish reason."""
    comps = []
    for o in out.outputs:
        lps = [next(iter(d.values())).logprob if d else 0.0 for d in o.logprobs] if o.logprobs else None
        comps.append(
            Completion(
                token_ids=list(o.token_ids),
                text=o.text,
                logprobs=lps,
                finish_reason="length" if o.finish_reason == "length" else "stop",
            )
        )
    return RolloutGroup(prompt=prompt, completions=comps)
