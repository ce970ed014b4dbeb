"""The vLLM rollout engine: group sampling with token ids, logprobs and finish reasons; in-place weight reload.

The engine runs in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, `distributed_executor_backend="uni"`): weights
then travel to the worker as live tensors, with no pickling and no copy to disk. In a multi-rank job every rank
owns one engine for its share of the prompts; vLLM reuses the already-initialised torch.distributed world and
gives each rank an independent TP=1 engine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence

from torch import Tensor

from sposd.rollout.base import SamplingCfg
from sposd.types import Completion, Prompt, RolloutGroup


def _set_env(kv_cache_gb: float) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(kv_cache_gb)))))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class VLLMEngine:
    """`RolloutEngine` backed by `vllm.LLM`.

    Args:
        model_path: HF-format directory or hub id.
        dtype: "float32" | "bfloat16" | "float16".
        max_model_len: prompt + completion token budget.
        seed: engine seed (rollout randomness; per-request seeds are not fixed, so requests differ).
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
            distributed_executor_backend="uni",
            tensor_parallel_size=tensor_parallel_size,
            trust_remote_code=trust_remote_code,
            worker_extension_cls="sposd.rollout.worker_ext.SposdWorkerExtension",
            enable_prefix_caching=True,
            # the weight-loading bar only when vLLM's INFO lines show (verbose=true; sposd.logging.quiet_libraries)
            use_tqdm_on_load=logging.getLogger("vllm").isEnabledFor(logging.INFO),
        )
        if device == "cuda":
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=enable_sleep_mode)
        if max_num_seqs:
            kwargs.update(max_num_seqs=max_num_seqs)
        self._llm = LLM(**kwargs)
        self._asleep = False

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
    def _params(self, sampling: SamplingCfg, *, n: int):
        from vllm import SamplingParams

        return SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,
            min_p=sampling.min_p,
            max_tokens=sampling.max_new_tokens,
            logprobs=0 if sampling.logprobs else None,  # 0: the sampled token's own logprob
            seed=sampling.seed,
            skip_special_tokens=True,
        )

    def generate(self, prompts: Sequence[Prompt], *, n: int, sampling: SamplingCfg) -> list[RolloutGroup]:
        """Sample n completions per prompt (vLLM's `n`, sharing the prompt's prefill)."""
        if not prompts:
            return []
        outs = self._llm.generate(
            [{"prompt_token_ids": p.prompt_ids} for p in prompts], self._params(sampling, n=n), use_tqdm=False
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
            [{"prompt_token_ids": p.prompt_ids} for p in prompts], self._params(sampling, n=n), use_tqdm=False
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
    def load_weights(self, named: Iterable[tuple[str, Tensor]]) -> None:
        """Stream new weights into the worker in place, then drop cached KV blocks computed with old weights."""
        self._llm.collective_rpc("sposd_reload_weights", args=(named,))
        self._llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Free the KV cache (GPU colocated mode) while the learner trains."""
        if not self._asleep and self._llm.llm_engine.vllm_config.model_config.enable_sleep_mode:
            self._llm.sleep(level=1)
            self._asleep = True

    def wake_up(self) -> None:
        if self._asleep:
            self._llm.wake_up()
            self._asleep = False

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
