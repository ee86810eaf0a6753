"""fit's parts without llama.cpp: Fisher diagonal, rotary un-permute, candidates, KV bytes, rank correlation, labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantbench.errors import QuantbenchError


class TinyLM(torch.nn.Module):
    """logits = W2 tanh(W1 E[x]): small enough for an exact Fisher by enumeration."""

    def __init__(self, vocab=7, hidden=5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Parameter(torch.randn(vocab, hidden, generator=g, dtype=torch.float64))
        self.w1 = torch.nn.Parameter(torch.randn(hidden, hidden, generator=g, dtype=torch.float64))
        self.w2 = torch.nn.Parameter(torch.randn(vocab, hidden, generator=g, dtype=torch.float64))

    def forward(self, x, use_cache=False):
        class Out:
            pass

        out = Out()
        out.logits = (torch.tanh(self.embed[x] @ self.w1.T) @ self.w2.T)
        return out


def exact_fisher(model, sequences, name):
    """(1/T) sum_t sum_y p_t(y) (d log p_t(y) / dW)^2, by enumerating every y (float64)."""
    p = dict(model.named_parameters())[name]
    total = torch.zeros_like(p)
    T = 0
    for ids in sequences:
        x = torch.tensor([ids])
        for t in range(len(ids)):
            probs = torch.softmax(model(x).logits[0, t], -1).detach()
            for y in range(probs.numel()):
                model.zero_grad()
                torch.log_softmax(model(x).logits[0, t], -1)[y].backward()
                total += probs[y] * p.grad ** 2
            T += 1
    return total / T


def test_fisher_estimate_converges_to_exact_fisher():
    from quantbench.methods.fisher import FisherConfig, fisher_diagonal

    model = TinyLM()
    sequences = [[1, 4, 2], [3, 0, 6, 5]]
    exact = exact_fisher(model, sequences, "w1")
    est = fisher_diagonal(model, sequences, ["w1"], FisherConfig(draws=400, seed=1)).values["w1"].double()
    # unbiased but noisy: elementwise within 25% of the largest entry, the sums within 10%
    assert torch.allclose(est, exact, atol=0.25 * float(exact.max()))
    assert float(est.sum()) == pytest.approx(float(exact.sum()), rel=0.1)
    assert not any(p.requires_grad for p in model.parameters())  # the caller's model is left as it was


def test_half_fisher_is_the_kld_curvature():
    """KL(p_ref || p(W + d e_ij)) ~ 1/2 F_ii d^2 for one small element change (float64)."""
    model = TinyLM(seed=3)
    sequences = [[1, 4, 2, 0]]
    F = exact_fisher(model, sequences, "w2")
    x = torch.tensor(sequences)
    ref = torch.log_softmax(model(x).logits[0], -1).detach()
    for (i, j) in [(0, 0), (3, 2), (6, 4)]:
        d = 1e-3
        with torch.no_grad():
            model.w2[i, j] += d
            lp = torch.log_softmax(model(x).logits[0], -1)
            model.w2[i, j] -= d
        kld = float((ref.exp() * (ref - lp)).sum(-1).mean())
        assert kld == pytest.approx(0.5 * float(F[i, j]) * d * d, rel=0.02)


def test_fisher_needs_sequences():
    from quantbench.methods.fisher import fisher_diagonal

    with pytest.raises(QuantbenchError, match="calibration"):
        fisher_diagonal(TinyLM(), [], ["w1"])


def test_unpermute_inverts_the_writer_permutation():
    from quantbench.formats.gguf_writer import permute_for_rotary, unpermute_for_rotary

    W = np.arange(6 * 8 * 5, dtype=np.float32).reshape(6 * 8, 5)  # 6 heads of head_dim 8
    P = permute_for_rotary(W, 6)
    assert not np.array_equal(P, W)
    assert np.array_equal(unpermute_for_rotary(P, 6), W)
    # row order inside a head: 0, h/2, 1, h/2+1, ... (convert_hf_to_gguf.py LlamaModel.permute)
    assert P[:4, 0].tolist() == [W[0, 0], W[4, 0], W[1, 0], W[5, 0]]


def _arch(hidden=576, ffn=1536, layers=2, vocab=1024, tied=True, head_dim=64):
    from quantbench.arch import ArchSpec

    return ArchSpec.from_config({"model_type": "llama", "hidden_size": hidden, "intermediate_size": ffn,
                                 "num_hidden_layers": layers, "num_attention_heads": 9, "num_key_value_heads": 3,
                                 "head_dim": head_dim, "vocab_size": vocab, "tie_word_embeddings": tied})


def test_candidates_are_the_types_llama_cpp_writes():
    from quantbench.fit.candidates import tensor_candidates

    by_name = {c.gguf_name: c for c in tensor_candidates(_arch())}
    # 576-wide rows: K and IQ types fall back (Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0, Q2_K/Q3_K->Q4_0, IQ*->IQ4_NL)
    q = by_name["blk.0.attn_q.weight"]
    assert set(q.types) == {"Q4_0", "IQ4_NL", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16"}
    assert q.bytes[q.types.index("Q4_0")] == 576 * 576 // 32 * 18
    # 1536-wide ffn_down takes the K-types themselves
    down = by_name["blk.1.ffn_down.weight"]
    assert {"Q2_K", "Q3_K", "IQ3_S", "IQ4_XS", "Q4_K", "Q5_K", "Q6_K"} <= set(down.types)
    assert down.bytes[down.types.index("Q4_K")] == 576 * 1536 // 256 * 144
    assert list(down.bytes) == sorted(down.bytes)
    assert "token_embd.weight" in by_name and "blk.0.attn_norm.weight" not in by_name
    # excluding a written type removes it everywhere
    assert all("Q4_1" not in c.types for c in tensor_candidates(_arch(), exclude=("Q4_1",)))


def test_no_quantized_type_fits_is_one_clear_error():
    from quantbench.fit.candidates import tensor_candidates

    with pytest.raises(QuantbenchError, match="no GGUF quantized type fits"):
        tensor_candidates(_arch(hidden=72, ffn=200, head_dim=8))  # no row width is a multiple of 32


def test_kv_cache_bytes_exact_arithmetic():
    from quantbench.fit.budget import RuntimeSetting, kv_cache_bytes

    arch = _arch(layers=30)
    # 8192 cells x 192 values x 30 layers x (K, V): f16 2 bytes, q8_0 34/32, q4_0 18/32
    assert kv_cache_bytes(arch, RuntimeSetting(8192, "F16")) == 30 * 2 * 192 * 8192 * 2
    assert kv_cache_bytes(arch, RuntimeSetting(8192, "Q8_0")) == 30 * 2 * 192 * 8192 // 32 * 34
    assert kv_cache_bytes(arch, RuntimeSetting(8192, "Q4_0")) == 30 * 2 * 192 * 8192 // 32 * 18
    # the context is padded to 256 cells, as llama.cpp does
    assert kv_cache_bytes(arch, RuntimeSetting(1000, "F16")) == kv_cache_bytes(arch, RuntimeSetting(1024, "F16"))
    assert RuntimeSetting(8192, "Q4_0").llama_cpp_flags() == "-c 8192 -ub 512 -ctk q4_0 -ctv q4_0 -fa on"
    with pytest.raises(QuantbenchError, match="flash attention"):
        RuntimeSetting(8192, "Q8_0", flash_attention=False)


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    from quantbench.fit.sensitivity import spearman

    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.normal(size=20)
        b = a + rng.normal(size=20)
        b[3] = b[4]  # a tie
        assert spearman(list(a), list(b)) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)


def test_frontier_plot_labels_do_not_overlap(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from quantbench.report.frontier import plot_frontier
    from quantbench.report.plot import place_labels

    fig, ax = plt.subplots()
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    items = [(5, 5, "Q4_K_M-imat"), (5.05, 5.05, "IQ4_XS-imat"), (5.1, 4.95, "Q4_0-imat"), (2, 2, "Q8_0")]
    anns = place_labels(fig, ax, items)
    r = fig.canvas.get_renderer()
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(a, r) for a in anns]  # the labels, not their leader lines
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(len(boxes)) for j in range(i))
    plt.close(fig)
    frontier = {"context": 512, "points": [{"total_bytes": 1e8, "predicted_kld": 0.1}, {"total_bytes": 2e8, "predicted_kld": 0.01}],
                "uniform": [{"name": "Q4_K_M-imat", "total_bytes": 1.5e8, "predicted_kld": 0.05, "measured_kld": 0.04, "ci95": (0.03, 0.05)},
                            {"name": "Q8_0-imat", "total_bytes": 1.9e8, "predicted_kld": 0.002}]}
    plot_frontier(frontier, tmp_path / "f.png", chosen={"total_bytes": 1.4e8, "predicted_kld": 0.03})
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_a_seed_plan_that_fits_to_the_byte_beats_the_rounded_knapsack():
    """The DP rounds bytes up to cells, and no single swap from its answer reaches the plan that fills the
    budget exactly (as a uniform type's plan does at its own size): fit offers that plan as a seed."""
    from quantbench.fit.pipeline import best_allocation
    from quantbench.methods.allocate import Frontier, Group, Option

    two = (Option("small", 1000, 1.0), Option("big", 1506, 0.0))
    groups = [Group("a", two), Group("b", two), Group("c", (Option("lo", 1000, 0.6), Option("hi", 1300, 0.0)))]
    budget = 4012  # a big, b big, c lo: exactly
    frontier = Frontier(groups, budget, tolerance=0.2)  # 67 B cells: the exact plan needs 16, only 15 exist
    alone, origin = best_allocation(frontier, budget, {})
    assert (alone.cost, alone.choice["c"], origin) == (1.0, "hi", "the knapsack")  # one big, and hi
    seeds = {"Q4_K_M-imat (KV F16)": {"a": "big", "b": "big", "c": "lo"}, "too big": {"a": "big", "b": "big", "c": "hi"}}
    best, origin = best_allocation(frontier, budget, seeds)
    assert (best.bytes, best.cost) == (4012, pytest.approx(0.6))
    assert origin == "the uniform Q4_K_M-imat (KV F16) plan, then the bytes left spent"
