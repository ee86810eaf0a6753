"""bitsandbytes through transformers: LLM.int8 and 4-bit NF4/FP4, with and without double quant.

quantbench.streaming.bnb reads the checkpoint one tensor at a time, quantizes each linear exactly as
transformers' quantize-on-load does and writes the tensors `save_pretrained` would, so plain
`AutoModelForCausalLM.from_pretrained(OUT)` reloads it (tests/test_streaming_bnb.py holds them equal).
Only the decoder's linears are quantized: transformers leaves the embeddings and lm_head alone.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from quantbench.arch import LINEAR
from quantbench.device import best_half_dtype
from quantbench.recipes.base import QuantizeJob, Recipe, TensorPlan, register
from quantbench.recipes.strategy import STREAM_BNB
from quantbench.runtimes.hf import HFRuntime

BLOCKSIZE_4BIT = 64  # bitsandbytes' default 4-bit block size
NESTED_BLOCKSIZE = 256  # double quant: absmax values quantized 256 at a time
CODE_4BIT_ENTRIES = 16  # `quant_map`: the fp32 NF4/FP4 code table saved beside every 4-bit weight
NESTED_CODE_ENTRIES = 256  # `nested_quant_map`: the fp32 signed 8-bit dynamic map of double quant
# `nested_offset` (the mean absmax, a Python float from an fp32 scalar) as it appears in the saved JSON:
# its repr is 17-20 characters; 20 is used, so a plan can be over by at most 3 bytes a tensor.
NESTED_OFFSET_JSON = "0.012345678918063641"


@dataclass(frozen=True)
class BnbSettings:
    bits: int  # 8 or 4
    quant_type: str = ""  # "nf4" or "fp4" for 4-bit
    double_quant: bool = False
    int8_threshold: float = 6.0  # LLM.int8 outlier threshold; 0 disables the decomposition


class BnbRecipe(Recipe):
    family = "bitsandbytes"
    runtime = "transformers"
    strategy = STREAM_BNB
    in_place = True

    def __init__(self, name: str, settings: BnbSettings, description: str):
        self.name = name
        self.settings = settings
        self.description = description

    def unavailable_reason(self, device: str) -> str | None:
        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes is not installed: pip install bitsandbytes==0.50.2"
        return None

    def quantization_config(self, compute_dtype: torch.dtype):
        from transformers import BitsAndBytesConfig

        s = self.settings
        if s.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=s.int8_threshold)
        # Every field set explicitly: transformers' defaults (fp4, no double quant, fp32 compute) trip benchmarks.
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=s.quant_type,
            bnb_4bit_use_double_quant=s.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
        )

    def quantize(self, job: QuantizeJob) -> dict:
        """Tensor by tensor from the checkpoint (quantbench.streaming.bnb): the same tensors transformers'
        quantize-on-load + save_pretrained writes, without the model ever being resident."""
        from transformers import AutoTokenizer

        from quantbench.recipes.intgrid import streamed_memory
        from quantbench.streaming.bnb import quantize_bnb_streaming

        compute_dtype = best_half_dtype(job.device)
        s = self.settings
        streamed = quantize_bnb_streaming(job.source.path, job.out_dir, s.bits, s.quant_type, s.double_quant, compute_dtype,
                                          self.quantization_config(compute_dtype).to_dict(), job.device)
        check_saved_absmax(job.out_dir)
        AutoTokenizer.from_pretrained(job.source.path).save_pretrained(job.out_dir)
        return {"compute_dtype": str(compute_dtype).removeprefix("torch."), "settings": self.settings.__dict__,
                "shards": len(streamed.files), **streamed_memory(streamed)}

    def open(self, artifact: Path, device: str) -> HFRuntime:
        return HFRuntime.load(artifact, device)

    def plan_tensor(self, tensor, arch, device="cuda", resident=False) -> TensorPlan:
        """Exact bytes of one tensor as bitsandbytes 0.50.2 stores it through transformers.

        Only the decoder's linears are quantized; every other tensor stays in the load dtype
        (`best_half_dtype(device)`: bf16, or fp32 on a CPU without bf16). What `save_pretrained` writes
        per linear of `rows` x `cols` = n weights (checked tensor by tensor against real artifacts in
        tests/test_plan_artifacts.py):

            int8:   weight int8 (rows, cols) | SCB fp32 (rows,) | weight_format uint8 ()
            4-bit:  weight uint8 (ceil(n/2), 1), two codes a byte | absmax fp32 (n/64,)
                    | quant_map fp32 (16,) | quant_state.bitsandbytes__<nf4|fp4>: the JSON of
                    {quant_type, blocksize, dtype, shape} as uint8
            4-bit + double quant: absmax uint8 (n/64,) | nested_absmax fp32 (ceil(n/64/256),)
                    | nested_quant_map fp32 (256,) | quant_map fp32 (16,) | the JSON, which also
                    holds nested_blocksize, nested_dtype and nested_offset

        This stored layout is the same whether quantized on CUDA or on CPU. `resident=True` gives the
        bytes in memory on `device` instead. On CUDA that is the stored layout without the JSON and the
        weight_format byte. On a CPU with AVX512-BF16 (bitsandbytes' has_avx512bf16()), the first
        forward of a 4-bit layer repacks it (functional._convert_weight_packed_for_cpu): codes keep
        their n/2 bytes, absmax becomes bf16 (cols/64, rows) and double quant is undone, so nf4 and
        nf4-dq both hold n/2 + 2n/64 bytes plus the 16-entry table.
        (bitsandbytes 0.50.2 saves that repacked absmax as it is when a forward ran before
        save_pretrained, and such an artifact reloads with wrong scales: quantize before any forward.)
        """
        import json

        n = tensor.numel
        load_dtype = self.compute_dtype(device)
        half_bytes = load_dtype.itemsize
        load_dtype_name = str(load_dtype).removeprefix("torch.")
        if tensor.role != LINEAR:
            return TensorPlan(tensor.name, n, n * half_bytes, False, f"{load_dtype_name} (not quantized)")
        rows, cols = tensor.shape
        s = self.settings
        if s.bits == 8:
            weight_format = 0 if resident else 1
            return TensorPlan(tensor.name, n, n + 4 * rows + weight_format, True, "int8 + fp32 row scale (SCB)")
        blocks = math.ceil(n / BLOCKSIZE_4BIT)
        packed = math.ceil(n / 2)  # two 4-bit codes a byte, first element in the high nibble
        code_table = CODE_4BIT_ENTRIES * 4
        if resident and device == "cpu" and _cpu_repacks_4bit():
            return TensorPlan(tensor.name, n, packed + 2 * blocks + code_table, True, f"{s.quant_type} + bf16 absmax/64 (CPU repacked)")
        state_json = {"quant_type": s.quant_type, "blocksize": BLOCKSIZE_4BIT, "dtype": load_dtype_name, "shape": [rows, cols]}
        if not s.double_quant:
            json_bytes = 0 if resident else len(json.dumps(state_json))
            return TensorPlan(tensor.name, n, packed + 4 * blocks + code_table + json_bytes, True, f"{s.quant_type} + fp32 absmax/64")
        nested_blocks = math.ceil(blocks / NESTED_BLOCKSIZE)
        state_json.update(nested_blocksize=NESTED_BLOCKSIZE, nested_dtype="float32", nested_offset=0.0)
        json_bytes = len(json.dumps(state_json).replace("0.0}", NESTED_OFFSET_JSON + "}"))
        if resident:
            json_bytes = 4  # the offset lives in memory as one fp32 scalar instead
        # uint8 absmax codes + fp32 nested absmax + 256-entry fp32 dynamic map + 16-entry code table.
        state = blocks + nested_blocks * 4 + NESTED_CODE_ENTRIES * 4 + code_table + json_bytes
        return TensorPlan(tensor.name, n, packed + state, True, f"{s.quant_type} + double-quant absmax (uint8/64, fp32/256*64)")

    def bench_apply(self, model, arch, device):
        """Replace every decoder linear with the bitsandbytes module transformers' integration creates,
        quantized on the device; the half-precision weight is freed as each one is replaced."""
        import bitsandbytes as bnb

        s = self.settings
        for tensor in arch.tensors():
            if tensor.role != LINEAR:
                continue
            parent_path, _, child_name = tensor.name.removesuffix(".weight").rpartition(".")
            parent = model.get_submodule(parent_path)
            old = getattr(parent, child_name)
            bias = old.bias
            if s.bits == 8:
                new = bnb.nn.Linear8bitLt(old.in_features, old.out_features, bias=bias is not None,
                                          has_fp16_weights=False, threshold=s.int8_threshold, device="meta")
                new.weight = bnb.nn.Int8Params(old.weight.data, requires_grad=False, has_fp16_weights=False)
            else:
                new = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=bias is not None, compute_dtype=model.dtype,
                                        compress_statistics=s.double_quant, quant_type=s.quant_type,
                                        quant_storage=torch.uint8, device="meta")
                new.weight = bnb.nn.Params4bit(old.weight.data, requires_grad=False, compress_statistics=s.double_quant,
                                               quant_type=s.quant_type, quant_storage=torch.uint8, module=new)
            new.weight._quantize(device)  # bitsandbytes' own quantization, on the device (what .to(device) does)
            if bias is not None:
                new.bias = torch.nn.Parameter(bias.data, requires_grad=False)
            new.eval()
            setattr(parent, child_name, new)
            del old
        return model


def _cpu_repacks_4bit() -> bool:
    """bitsandbytes repacks 4-bit weights for its AVX512-BF16 CPU kernel at the first forward."""
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:
        return False
    return bool(has_avx512bf16())

def check_saved_absmax(folder: Path) -> None:
    """Refuse a 4-bit artifact whose absmax was saved in bitsandbytes' CPU-repacked layout.

    bitsandbytes 0.50.2 repacks a 4-bit layer for its CPU kernel on the first forward (absmax becomes
    bf16, shape (cols/64, rows)) and save_pretrained does not undo it for nf4/fp4: the file then
    reloads with wrong scales. quantize never runs a forward before saving, so this guards a regression.
    """
    from quantbench.errors import QuantbenchError
    from quantbench.formats.safetensors import read_header

    for shard in folder.glob("*.safetensors"):
        header = read_header(shard)
        for name, info in header.items():
            if name.endswith(".absmax") and not name.endswith("nested_absmax") and info["dtype"] not in ("F32", "U8"):
                raise QuantbenchError(
                    f"bitsandbytes saved {name} as {info['dtype']} (its CPU-repacked layout), which reloads with wrong "
                    "scales; quantize in a fresh process without running the model first"
                )


register(BnbRecipe("bnb-int8", BnbSettings(8, int8_threshold=6.0), "LLM.int8: int8 rows, fp16 outlier columns above 6.0"))
register(BnbRecipe("bnb-int8-nodecomp", BnbSettings(8, int8_threshold=0.0), "int8 absmax, no outlier decomposition"))
register(BnbRecipe("bnb-nf4", BnbSettings(4, "nf4"), "NF4 codebook, fp32 absmax per 64"))
register(BnbRecipe("bnb-nf4-dq", BnbSettings(4, "nf4", double_quant=True), "NF4 with double-quantized absmax (QLoRA)"))
register(BnbRecipe("bnb-fp4", BnbSettings(4, "fp4"), "FP4 (e2m1) codebook, fp32 absmax per 64"))
