"""The tiny model in vLLM (CPU build): it loads, samples ids the tokenizer knows, and its text and log-probs
agree with transformers. Run in a subprocess so this engine cannot collide with another in the session."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

SCRIPT = r'''
import json, sys
if __name__ == "__main__":
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams
    from sposd.data.templates import TOY_INSTRUCTION, build_user_message, render_prompt_ids

    path = sys.argv[1]
    tok = AutoTokenizer.from_pretrained(path)
    llm = LLM(model=path, dtype="float32", distributed_executor_backend="uni", enforce_eager=True,
              max_model_len=256, seed=0)
    ids = render_prompt_ids(tok, build_user_message("Compute 1+2.", instruction=TOY_INSTRUCTION),
                            enable_thinking=False)
    out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(n=8, temperature=1.0, max_tokens=24),
                       use_tqdm=False)[0]
    comps = [(list(o.token_ids), o.text) for o in out.outputs]
    fixed = ids + tok.encode("1+2=3. \\boxed{3}", add_special_tokens=False)
    plp = llm.generate([{"prompt_token_ids": fixed}], SamplingParams(max_tokens=1, prompt_logprobs=0),
                       use_tqdm=False)[0].prompt_logprobs
    vllm_lp = [plp[i][fixed[i]].logprob for i in range(len(ids), len(fixed))]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([fixed])).logits[0].float(), -1)
    hf_lp = [logp[i - 1, fixed[i]].item() for i in range(len(ids), len(fixed))]
    print("RESULT" + json.dumps(dict(comps=comps, vllm_lp=vllm_lp, hf_lp=hf_lp, vocab=len(tok))))
'''


def test_tiny_model_runs_in_vllm(tiny_model_dir, tmp_path):
    pytest.importorskip("vllm")
    from transformers import AutoTokenizer

    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", TMPDIR=str(tmp_path),
               VLLM_RPC_BASE_PATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir)], capture_output=True, text=True,
                          env=env, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT"):])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for token_ids, text in res["comps"]:
        assert all(0 <= t < res["vocab"] for t in token_ids)
        assert text == tok.decode(token_ids, skip_special_tokens=True)  # vLLM's incremental detokenizer agrees
    assert max(abs(a - b) for a, b in zip(res["vllm_lp"], res["hf_lp"], strict=True)) < 1e-4
