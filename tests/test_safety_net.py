"""Safety net for the issue-8 refactor: each test here was seen failing on a deliberately planted bug.

Oracles are independent of the code under test: KL divergence and perplexity in float64 over windows cut
by raw slicing of the token list; bits per weight from the safetensors header's own dtype x shape; Q8_0
bytes from `gguf.quants.quantize` on exact ties; reference caches checked against the tokens scored.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from quantbench.errors import QuantbenchError

WINDOW, WINDOWS = 64, 3
DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def header_of(shard: Path) -> dict:
    """The safetensors header, parsed here (8-byte little-endian length, then JSON)."""
    with open(shard, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def header_bytes_and_numel(folder: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Per tensor: bytes = numel x dtype size, and numel, from every shard's own header."""
    nbytes, numel = {}, {}
    for shard in sorted(folder.glob("*.safetensors")):
        for name, info in header_of(shard).items():
            numel[name] = math.prod(info["shape"])
            nbytes[name] = numel[name] * DTYPE_BYTES[info["dtype"]]
    return nbytes, numel


def raw_windows(ids: list[int], window: int, count: int) -> list[tuple[list[int], list[int]]]:
    """GPTQ protocol by hand: non-overlapping slices; inputs = slice[:-1], targets = slice[1:]."""
    return [(ids[k * window : (k + 1) * window - 1], ids[k * window + 1 : (k + 1) * window]) for k in range(count)]


def evaluation_ids(model_dir: Path, text_file: Path) -> list[int]:
    """The evaluation split as the API defines it: the text after its first quarter of tokens."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(text_file.read_text(), add_special_tokens=False)["input_ids"]
    return ids[int(len(ids) * 0.25) :]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("safety-net-cache")
    mp.setenv("QUANTBENCH_CACHE", str(root))
    yield root
    mp.undo()


def settings(window: int = WINDOW, windows: int = WINDOWS):
    from quantbench.api import Settings
    from quantbench.eval.perplexity import PerplexityProtocol

    return Settings(protocol=PerplexityProtocol(window=window, max_windows=windows), measure_speed=False)


# ---------------------------------------------------------------------------------------------------
# KL divergence direction and perplexity


def test_accumulated_kld_is_kl_of_candidate_from_reference():
    """KL(P_ref || Q), not KL(Q || P_ref): checked where windows are accumulated, with a perturbation that
    makes the two directions differ by far more than the tolerance."""
    from quantbench.eval.divergence import QualityAccumulator

    g = torch.Generator().manual_seed(0)
    acc = QualityAccumulator()
    forward, backward, nll, agree, n = [], [], 0.0, 0, 0
    for rows in (7, 13, 5):
        ref_logits = torch.randn(rows, 50, generator=g, dtype=torch.float64)
        cand_logits = ref_logits + 2.0 * torch.randn(rows, 50, generator=g, dtype=torch.float64)
        targets = torch.randint(0, 50, (rows,), generator=g)
        acc.add(torch.log_softmax(cand_logits.float(), -1), targets, torch.log_softmax(ref_logits.float(), -1))
        P, Q = torch.softmax(ref_logits, -1), torch.softmax(cand_logits, -1)  # float64
        for r in range(rows):
            forward.append(sum(p * math.log(p / q) for p, q in zip(P[r].tolist(), Q[r].tolist())))
            backward.append(sum(q * math.log(q / p) for p, q in zip(P[r].tolist(), Q[r].tolist())))
            nll -= math.log(Q[r, targets[r]].item())
            agree += int(P[r].argmax() == Q[r].argmax())
            n += 1
    got = acc.summary()
    kl_forward, kl_backward = sum(forward) / n, sum(backward) / n
    assert abs(kl_forward - kl_backward) > 0.05 * kl_forward  # the directions are far apart (> 50x the tolerance)
    assert got["kld_mean"] == pytest.approx(kl_forward, rel=1e-5)
    assert got["kld_max"] == pytest.approx(max(forward), rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert got["top1_agreement"] == agree / n and got["scored_tokens"] == n == 25


@pytest.fixture(scope="module")
def perturbed_model(tiny_model, tmp_path_factory) -> Path:
    """A plain HF folder whose logits differ from the tiny model's by O(1): large, asymmetric KL."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if name == "lm_head.weight" else 0.02
            p.add_(scale * torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("perturbed")
    model.save_pretrained(out)
    return out


def test_evaluate_matches_float64_over_raw_sliced_windows(tiny_model, perturbed_model, tiny_text_file, shared_cache):
    """The whole path (windows, cached reference, worker, accumulator) against a float64 loop."""
    from transformers import AutoModelForCausalLM

    from quantbench import api

    row = api.evaluate(perturbed_model, str(tiny_model), text=str(tiny_text_file), device="cpu", settings=settings())
    ref_model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float64).eval()
    cand_model = AutoModelForCausalLM.from_pretrained(perturbed_model, dtype=torch.float64).eval()
    ids = evaluation_ids(tiny_model, tiny_text_file)
    forward, backward, ref_nll, nll, agree, n = 0.0, 0.0, 0.0, 0.0, 0, 0
    for inputs, targets in raw_windows(ids, WINDOW, WINDOWS):
        with torch.no_grad():
            P = torch.log_softmax(ref_model(torch.tensor([inputs])).logits[0], -1)  # (window-1, vocab)
            Q = torch.log_softmax(cand_model(torch.tensor([inputs])).logits[0], -1)
        for pos, tok in enumerate(targets):
            forward += float((P[pos].exp() * (P[pos] - Q[pos])).sum())
            backward += float((Q[pos].exp() * (Q[pos] - P[pos])).sum())
            ref_nll -= float(P[pos, tok])
            nll -= float(Q[pos, tok])
            agree += int(P[pos].argmax() == Q[pos].argmax())
            n += 1
    assert n == WINDOWS * (WINDOW - 1) == row["scored_tokens"]
    assert abs(forward - backward) > 0.05 * forward  # the perturbation makes the direction visible
    assert row["kld_mean"] == pytest.approx(forward / n, rel=1e-4)
    assert row["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert row["reference_ppl"] == pytest.approx(math.exp(ref_nll / n), rel=1e-5)
    assert row["top1_agreement"] == pytest.approx(agree / n, abs=1.5 / n)  # at most one near-tie may flip


@pytest.mark.parametrize("kwargs", [dict(window=10, max_windows=3), dict(window=10, max_windows=2, score_from=5),
                                    dict(window=10, max_windows=1, bos_token_id=7), dict(window=7, max_windows=99)])
def test_make_windows_equals_raw_slicing(kwargs):
    from quantbench.eval.perplexity import PerplexityProtocol, make_windows

    ids = list(range(100, 150))
    protocol = PerplexityProtocol(**kwargs)
    got = make_windows(ids, protocol)
    w, s = protocol.window, protocol.score_from
    count = min(protocol.max_windows, len(ids) // w)
    assert len(got) == count
    for k, win in enumerate(got):
        chunk = ids[k * w : k * w + w]
        if protocol.bos_token_id is None:
            assert (win.input_ids, win.targets, win.first_scored) == (chunk[:-1], chunk[s + 1 :], s)
        else:
            assert (win.input_ids, win.targets, win.first_scored) == ([protocol.bos_token_id] + chunk[:-1], chunk[s:], s)


# ---------------------------------------------------------------------------------------------------
# Bits per weight: every stored bit, exactly


@pytest.mark.parametrize("method", ["bnb-nf4", "bnb-nf4-dq"])
def test_bits_per_weight_is_exact_from_the_header(method, tiny_model, tiny_text_file, tmp_path, shared_cache):
    """Expected bits from the artifact's own header: (codes + absmax + code tables + ...) x 8 / parameters."""
    from quantbench import api

    out = tmp_path / method
    meta = api.quantize(str(tiny_model), method, out, text=str(tiny_text_file), device="cpu", settings=settings())
    stored, _ = header_bytes_and_numel(out)
    _, source_numel = header_bytes_and_numel(tiny_model)
    linears = {n for n in source_numel if ".layers." in n and n.endswith("_proj.weight")}  # bitsandbytes' scope
    assert len(linears) == 2 * 7
    state = [k for k in stored if k not in source_numel]
    assert state, "the artifact stores no quantization state"
    modules = {n.removesuffix("weight") for n in linears}  # state sits beside the weight: `...q_proj.weight.absmax`
    q_bytes = sum(b for k, b in stored.items() if any(k.startswith(m) for m in modules))
    assert q_bytes > sum(stored[n] for n in linears)  # the state is part of it
    assert meta["weight_bytes"] == sum(stored.values())
    assert meta["bits_per_weight"] == pytest.approx(8 * sum(stored.values()) / sum(source_numel.values()), rel=1e-12)
    assert meta["bits_per_weight_quantized"] == pytest.approx(8 * q_bytes / sum(source_numel[n] for n in linears), rel=1e-12)
    # 4-bit codes + fp32 absmax per 64 (nested: 8-bit absmax per 64 + fp32 per 256 blocks) + code tables
    assert meta["bits_per_weight_quantized"] > (4.5 if method == "bnb-nf4" else 4.125)


# ---------------------------------------------------------------------------------------------------
# The cached reference: keyed on everything it depends on, and checked against the windows it scores


def test_reference_key_depends_on_model_text_protocol_and_dtype():
    from quantbench.eval.perplexity import PerplexityProtocol
    from quantbench.eval.reference import reference_key

    base = ("model-a", "text-a", PerplexityProtocol(window=64), "auto")
    variants = [("model-b", "text-a", PerplexityProtocol(window=64), "auto"),
                ("model-a", "text-b", PerplexityProtocol(window=64), "auto"),
                ("model-a", "text-a", PerplexityProtocol(window=32), "auto"),
                ("model-a", "text-a", PerplexityProtocol(window=64, score_from=10), "auto"),
                ("model-a", "text-a", PerplexityProtocol(window=64), "bf16")]
    keys = {reference_key(*v) for v in variants}
    assert len(keys) == len(variants) and reference_key(*base) not in keys
    assert reference_key(*base) == reference_key("model-a", "text-a", PerplexityProtocol(window=64), "auto")


def test_a_new_text_gets_its_own_reference(tiny_model, tiny_text_file, tmp_path, shared_cache):
    """Same model and protocol, another text: a second reference file, with that text's perplexity."""
    from quantbench import api

    other = tmp_path / "other.txt"
    other.write_text(" ".join(reversed(tiny_text_file.read_text().split())))
    paths, ppls = [], []
    for text in (tiny_text_file, other):
        work = api.prepare(str(tiny_model), str(text), settings(windows=2))
        path, ppl = api.ensure_reference(work, "cpu")
        paths.append(path)
        ppls.append(ppl)
    assert paths[0] != paths[1] and paths[0].is_file() and paths[1].is_file()
    assert abs(ppls[0] - ppls[1]) > 1e-6 * ppls[0]


class _RandomRuntime:
    vocab = 512  # the tiny model's: without the guard the worker would score the stale reference silently

    def logits(self, ids):
        return torch.randn(len(ids), self.vocab, generator=torch.Generator().manual_seed(len(ids)))


def test_stale_reference_is_refused(tmp_path):
    from quantbench.eval.perplexity import Window
    from quantbench.eval.reference import Reference, compute_reference

    windows = [Window([1, 2, 3], [2, 3, 4], 0), Window([5, 6, 7], [6, 7, 8], 0)]
    path = tmp_path / "ref.safetensors"
    compute_reference(_RandomRuntime(), windows, path, {"test": True})
    ref = Reference(path)
    ref.check_matches([w.targets for w in windows])  # the matching windows pass
    with pytest.raises(QuantbenchError, match="does not match the current windows.*window 1.*delete that file"):
        ref.check_matches([[2, 3, 4], [6, 7, 9]])
    with pytest.raises(QuantbenchError, match="holds 2 windows, the current protocol has 3"):
        ref.check_matches([[2, 3, 4], [6, 7, 8], [1, 1, 1]])


def test_worker_refuses_a_reference_for_other_windows(tiny_model, tmp_path):
    from quantbench.eval.evaluate import evaluate_in_this_process
    from quantbench.eval.perplexity import Window
    from quantbench.eval.reference import compute_reference
    from quantbench.jobs import EvaluateJob

    path = tmp_path / "ref.safetensors"
    compute_reference(_RandomRuntime(), [Window([1, 2, 3], [2, 3, 4], 0)], path, {"test": True})
    job = EvaluateJob(str(tiny_model), "cpu", (Window([1, 2, 3], [2, 3, 5], 0),), str(path))
    with pytest.raises(QuantbenchError, match="does not match the current windows"):
        evaluate_in_this_process(job)


# ---------------------------------------------------------------------------------------------------
# A garbled safetensors header: one clear error, never a traceback


def _garbled(tiny_model: Path, folder: Path, how: str) -> Path:
    shutil.copytree(tiny_model, folder)
    shard = folder / "model.safetensors"
    data = shard.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    first = next(k for k in header if k != "__metadata__")
    if how == "not-json":
        new = b"{garbled"
    elif how == "json-list":
        new = b"[1, 2, 3]"
    elif how == "short-offsets":
        header[first]["data_offsets"] = header[first]["data_offsets"][:1]
        new = json.dumps(header).encode()
    elif how == "unknown-dtype":
        header[first]["dtype"] = "F99"
        new = json.dumps(header).encode()
    elif how == "offsets-disagree-with-shape":
        header[first]["shape"] = [header[first]["shape"][0] + 1] + header[first]["shape"][1:]
        new = json.dumps(header).encode()
    elif how == "length-past-end":
        shard.write_bytes(struct.pack("<Q", 10**12) + data[8:])
        return folder
    else:
        raise ValueError(how)
    new = new.ljust(n)  # same header length: only the content is garbled
    shard.write_bytes(data[:8] + new + data[8 + n :])
    return folder


GARBLES = ["not-json", "json-list", "short-offsets", "unknown-dtype", "offsets-disagree-with-shape", "length-past-end"]


@pytest.mark.parametrize("how", GARBLES)
def test_garbled_header_is_one_quantbench_error(how, tiny_model, tmp_path):
    from quantbench.eval.memory import stored_tensor_bytes
    from quantbench.sources.model import resolve_model

    folder = _garbled(tiny_model, tmp_path / how, how)
    with pytest.raises(QuantbenchError, match="(corrupt safetensors header|truncated safetensors file).*re-download"):
        resolve_model(str(folder))
    with pytest.raises(QuantbenchError, match="corrupt safetensors header|truncated safetensors file"):
        stored_tensor_bytes(folder)


def test_garbled_header_through_the_cli(tiny_model, tiny_text_file, tmp_path, shared_cache):
    """quantize reads it as a model; eval opens it as an artifact (in the worker): both say what to do."""
    bad = _garbled(tiny_model, tmp_path / "bad", "json-list")
    res = run_cli("quantize", str(bad), "--method", "bnb-nf4", "-o", str(tmp_path / "o"), "--device", "cpu")
    assert res.returncode == 2 and "corrupt safetensors header" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "o").exists()
    bad = _garbled(tiny_model, tmp_path / "bad-artifact", "short-offsets")
    res = run_cli("eval", str(bad), "--reference", str(tiny_model), "--text", str(tiny_text_file), "--device", "cpu",
                  "--window", str(WINDOW), "--windows", str(WINDOWS), "--no-speed")
    assert res.returncode == 2 and "corrupt safetensors header" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "Error:" not in res.stderr, res.stderr


# ---------------------------------------------------------------------------------------------------
# Q8_0 on real ties


def test_q8_0_rounds_real_ties_like_gguf():
    """absmax 127 makes d = 1 and 1/d = 1 exactly, so x.5 values are exact ties after scaling; ggml's
    roundf takes them away from zero (2.5 -> 3, -0.5 -> -1), where round-half-even would not."""
    import gguf

    from quantbench.formats.gguf_writer import encode_q8_0

    ties = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3.5, -4.5, 100.5, -126.5, 62.5, -63.5], dtype=np.float32)
    x = np.zeros((2, 64), dtype=np.float32)
    x[:, 0] = 127.0  # absmax of the first block of each row
    x[:, 1 : 1 + len(ties)] = ties
    x[0, 32] = -127.0  # second block: its own ties
    x[0, 33:45] = ties
    x[1, 32:64] = np.float32(0.25)  # d = 0.25/127: no ties; also checked
    scaled = x[:, :32] * (np.float32(1) / (np.abs(x[:, :32]).max(axis=1, keepdims=True) / np.float32(127)))
    assert np.array_equal(scaled[:, 1 : 1 + len(ties)] % 1, np.full((2, len(ties)), 0.5, np.float32))  # real ties
    ours = encode_q8_0(x)
    theirs = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
    assert np.array_equal(ours, theirs)
    codes = ours[0, 2:34].view(np.int8)[1 : 1 + len(ties)].tolist()
    assert codes == [1, -1, 2, -2, 3, -3, 4, -5, 101, -127, 63, -64]
