"""Reference perplexity with and without BOS, with intervals: why the protocol must follow the tokenizer.

For each model: the tokenizer's own convention (GGUF source: tokenizer.ggml.add_bos_token; HF folder:
whether `tokenizer("x")` puts bos_token_id first), then the fp32 reference's perplexity on the default
text's evaluation split (windows of 512, every position scored) once without and once with BOS
prepended to every window, each with its block-bootstrap interval (eval/uncertainty.py) and llama.cpp's
per-token +/-, and the paired ln(PPL ratio) between the two on the same tokens.

    PYTHONPATH=. python3 benchmarks/bos_protocol.py --model smollm2-135m --model /path/gemma-3-270m-q4_k_m.gguf
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch


def tokenizer_adds_bos(tokenizer) -> bool:
    ids = tokenizer("x")["input_ids"]
    return tokenizer.bos_token_id is not None and len(ids) > 0 and ids[0] == tokenizer.bos_token_id


def gguf_adds_bos(path: Path) -> bool | None:
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("tokenizer.ggml.add_bos_token")
    return None if field is None else bool(field.contents())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/bos_protocol.json")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantbench.eval.perplexity import PerplexityProtocol, make_windows
    from quantbench.eval.uncertainty import BootstrapConfig, log_ppl_ratio_interval, perplexity_interval
    from quantbench.sources.model import DEFAULT_MODEL, default_gguf_path, resolve_model
    from quantbench.sources.text import load_text, split_tokens

    torch.set_num_threads(2)
    config = BootstrapConfig()
    results = []
    for spec in args.model:
        source = resolve_model(spec)
        gguf_path = default_gguf_path() if spec == DEFAULT_MODEL else Path(spec) if spec.endswith(".gguf") else None
        tok = AutoTokenizer.from_pretrained(source.path)
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
        ids = split_tokens(tok(load_text(None).content, add_special_tokens=False)["input_ids"]).evaluation
        nll = {}
        for with_bos in (False, True):
            protocol = PerplexityProtocol(window=512, max_windows=args.windows,
                                          bos_token_id=tok.bos_token_id if with_bos else None)
            per_window = []
            with torch.inference_mode():
                for w in make_windows(ids, protocol):
                    logits = model(torch.tensor([w.input_ids])).logits[0, w.first_scored :].float()
                    lp = torch.log_softmax(logits, -1)
                    per_window.append((-lp.gather(-1, torch.tensor(w.targets)[:, None])[:, 0]).double().numpy())
            nll[with_bos] = per_window
        # The BOS window scores one more token (the first of the chunk); compare on the shared ones.
        shared_with = [w[1:] for w in nll[True]]
        ratio = log_ppl_ratio_interval(shared_with, nll[False], config)
        row = {
            "model": spec, "tokenizer_adds_bos": tokenizer_adds_bos(tok),
            "gguf_add_bos_token": gguf_adds_bos(gguf_path) if gguf_path else None,
            "bos_token_id": tok.bos_token_id, "windows": args.windows, "window": 512,
            "ppl_without_bos": perplexity_interval(nll[False], config).to_dict(),
            "ppl_with_bos": perplexity_interval(nll[True], config).to_dict(),
            "ln_ppl_ratio_with_over_without_on_shared_tokens": ratio.to_dict(),
        }
        results.append(row)
        print(f"{spec}: tokenizer adds BOS: {row['tokenizer_adds_bos']} (GGUF add_bos_token {row['gguf_add_bos_token']}); "
              f"PPL without BOS {row['ppl_without_bos']['estimate']:.2f} "
              f"[{row['ppl_without_bos']['low']:.2f}, {row['ppl_without_bos']['high']:.2f}], with BOS "
              f"{row['ppl_with_bos']['estimate']:.2f} [{row['ppl_with_bos']['low']:.2f}, {row['ppl_with_bos']['high']:.2f}]; "
              f"ln ratio {ratio.estimate:+.3f} [{ratio.low:+.3f}, {ratio.high:+.3f}]")
        del model
    out = {"what": "fp32 reference perplexity with and without BOS per window", "text": "default wikipedia excerpt, evaluation split",
           "rows": results, "bootstrap": config.describe(0).replace("0 blocks", "N blocks"),
           "machine": f"{platform.machine()} CPU, torch {torch.__version__}", "date": time.strftime("%Y-%m-%d"),
           "command": "PYTHONPATH=. python3 benchmarks/bos_protocol.py --model smollm2-135m --model GEMMA.gguf"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
