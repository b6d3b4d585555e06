"""GPU check: raw `model.generate` vs the suite path on a randomly initialised model with Llama-3.1-8B's shape.

The hub is unreachable on the GPU machine, so the weights are random (bf16, on the GPU) and only the chat
template and tokenizer are real: SmolLM2's, from a folder (`--tokenizer`, default the converted-model cache
of the embedded model). The vocabulary is the tokenizer's (49,152 instead of Llama's 128,256: a smaller
output layer, about 0.4 of 8 B parameters less); every other dimension is Llama-3.1-8B's. Output length is
fixed (EOS suppressed, a decision window too long to fill), so both paths generate the same tokens and the
ratio is the suite's overhead per token: templating, bucketing, the per-row stopping check, detector,
gates and results file.

    PYTHONPATH=src python scripts/gpu_bench.py [--cases 512] [--batch-size 0] [--max-new-tokens 64] [--rounds 2]

Prints one JSON object (also written to --out when given).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from falserefusal.generation.backends import BackendOptions
from falserefusal.generation.backends.huggingface import TransformersBackend, converted_cache_dir
from falserefusal.validation.bench import naive_generate, peak_rss_mb, pick_cases, suite_path
from falserefusal.detection.detector import RefusalDetector
from falserefusal.generation.generator import Generator, request_for
from falserefusal.run.config import RunConfig
from falserefusal.run.results import package_versions
from falserefusal.run.prepare import prepare

#: meta-llama/Llama-3.1-8B config.json (hard-coded: no hub access on the GPU machine)
LLAMA_31_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, hidden_act="silu",
    tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
)


def default_tokenizer_dir() -> Path:
    found = sorted(p for p in converted_cache_dir().glob("*") if (p / "tokenizer_config.json").is_file())
    if not found:
        sys.exit("no tokenizer: pass --tokenizer DIR (a folder with SmolLM2's tokenizer files)")
    return found[0]


def random_backend(tokenizer_dir: Path, batch_size: int, max_new_tokens: int, device: str, layers: int) -> TransformersBackend:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                  **{**LLAMA_31_8B, "num_hidden_layers": layers})
    torch.manual_seed(0)
    with torch.device(device):  # initialised in place: 16 GB of random weights on the host would take minutes
        lm = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    lm.eval()
    # fixed output length: no row may end at EOS (random weights would hit it by chance)
    lm.generation_config.eos_token_id = None
    lm.generation_config.suppress_tokens = [tokenizer.eos_token_id]
    backend = TransformersBackend.__new__(TransformersBackend)  # the real class, with the weights swapped in
    backend.model = str(tokenizer_dir)
    backend.options = BackendOptions(device=device, batch_size=batch_size, max_new_tokens=max_new_tokens)
    backend.torch, backend.device, backend.dtype = torch, device, torch.bfloat16
    backend.tokenizer, backend.lm = tokenizer, lm
    backend._identity = {"backend": "transformers", "model": "random Llama-3.1-8B shape", "dtype": "bfloat16", "device": device}
    return backend


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--cases", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=0, help="0: the backend's automatic pick")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--check-every", type=int, nargs="+", default=[1, 4], help="DecidedRows check intervals to time")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cuda", help="cpu only to smoke-test this script (with --layers 1)")
    parser.add_argument("--layers", type=int, default=LLAMA_31_8B["num_hidden_layers"])
    args = parser.parse_args()

    root = Path(__file__).resolve().parents[1]
    tokenizer_dir = args.tokenizer or default_tokenizer_dir()
    started = time.perf_counter()
    backend = random_backend(tokenizer_dir, args.batch_size, args.max_new_tokens, args.device, args.layers)
    load_s = time.perf_counter() - started
    workdir = tempfile.mkdtemp(prefix="gpu-bench-")
    config = RunConfig(models=(str(tokenizer_dir),), samples=1, root=str(root), progress=False, report_dir=workdir, use_cache=False,
                       backend_options=backend.options)
    per_sample = len(prepare(config).cases)
    config = replace(config, samples=-(-args.cases // per_sample))
    cases = pick_cases(prepare(config).cases, args.cases)
    requests = [request_for(c) for c in cases]
    batch_size = args.batch_size or backend.auto_batch_size(requests, args.max_new_tokens)
    config = replace(config, backend_options=replace(backend.options, batch_size=batch_size))
    prompts = [backend.render(r) for r in requests]

    generator = Generator(config)
    generator.backends[config.models[0]] = backend
    generator.detector = RefusalDetector(decision_window=10**9)  # never full: the same tokens as the naive run
    naive_generate(backend, prompts[:batch_size], batch_size, 4)  # warm-up (CUDA context, kernels)
    rounds: dict[str, list[float]] = {"naive": []}
    tokens: dict[str, float] = {}
    for _ in range(args.rounds):
        sync(args.device)
        naive = naive_generate(backend, prompts, batch_size, args.max_new_tokens)
        rounds["naive"].append(naive.timing.wall_s)
        tokens["naive"] = sum(naive.row_tokens) / len(cases)
        for every in args.check_every:
            backend.stop_check_every = every
            records, timing = suite_path(config, generator, {c.case_id for c in cases}, workdir)
            sync(args.device)
            rounds.setdefault(f"suite_every{every}", []).append(timing.wall_s)
            tokens[f"suite_every{every}"] = sum(r.n_tokens for r in records) / len(cases)
    naive_s = statistics.median(rounds["naive"])
    cuda = args.device.startswith("cuda")
    result = {
        "device": torch.cuda.get_device_name(0) if cuda else args.device,
        "layers": args.layers,
        "model": "random init, Llama-3.1-8B dimensions, bf16, vocab 49152 (SmolLM2 tokenizer)",
        "cases": len(cases),
        "batch_size": batch_size,
        "batch_size_automatic": args.batch_size == 0,
        "max_new_tokens": args.max_new_tokens,
        "load_s": load_s,
        "wall_s": rounds,
        "generated_tokens_per_case": tokens,
        "cases_per_s": {name: len(cases) / statistics.median(times) for name, times in rounds.items()},
        "overhead_ratio": {name: statistics.median(t / n for t, n in zip(times, rounds["naive"]))
                           for name, times in rounds.items() if name != "naive"},
        "naive_median_s": naive_s,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_rss_mb": peak_rss_mb(),
        "versions": package_versions(),
    }
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
