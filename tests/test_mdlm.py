"""Masked-diffusion LM: losses against hand computations, masking statistics, the likelihood
bound, sampling order, the model's attention direction."""

import math

import pytest
import torch

from families.mdlm.evaluate import bound_draws
from families.mdlm.loss import ar_loss, diffusion_loss, forward_process, response_mask, sft_loss
from families.mdlm.model import MDLM
from families.mdlm.sample import generate, transfer_schedule
from models.transformer import apply_rotary, rotary_tables
from pipelines.config import MDLMModelConfig

MASK = 1


def tiny(objective="diffusion", vocab=50, length=32):
    torch.manual_seed(0)
    return MDLM(
        MDLMModelConfig(
            objective=objective, vocab_size=vocab, mask_id=MASK, context_length=length, width=32, layers=2, heads=2
        )
    ).eval()


def log_softmax_at(row, i):
    return row[i] - math.log(sum(math.exp(v) for v in row))


def test_diffusion_loss_equals_hand_computation():
    # one sequence of 4 tokens over a vocabulary of 3; positions 0 and 2 masked with p_mask 0.25
    logits = torch.tensor([[[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0]]])
    tokens = torch.tensor([[0, 2, 1, 0]])
    masked = torch.tensor([[True, False, True, False]])
    p_mask = torch.full((1, 4), 0.25)
    ce0 = -log_softmax_at([2.0, 0.5, -1.0], 0)
    ce2 = -log_softmax_at([0.1, 0.2, 3.0], 1)
    expected = (ce0 / 0.25 + ce2 / 0.25) / 4  # summed over masked, / (B x L)
    assert diffusion_loss(logits, tokens, masked, p_mask).item() == pytest.approx(expected, rel=1e-6)


def test_sft_loss_divides_each_sequence_by_its_response_length():
    logits = torch.zeros(2, 4, 3)
    logits[0, 3] = torch.tensor([0.0, 2.0, 0.0])
    logits[1, 1] = torch.tensor([1.0, 0.0, 0.0])
    tokens = torch.tensor([[2, 2, 0, 1], [2, 0, 0, 0]])
    prompt_len = torch.tensor([2, 1])  # responses of 2 and 3 tokens
    masked = torch.tensor([[False, False, True, True], [False, True, False, False]])
    p_mask = torch.tensor([[0.5] * 4, [0.8] * 4])
    ce_a = math.log(3) / 0.5 + (-log_softmax_at([0.0, 2.0, 0.0], 1)) / 0.5
    ce_b = (-log_softmax_at([1.0, 0.0, 0.0], 0)) / 0.8
    expected = (ce_a / 2 + ce_b / 3) / 2
    assert sft_loss(logits, tokens, masked, p_mask, prompt_len).item() == pytest.approx(expected, rel=1e-6)


def test_ar_loss_is_next_token_cross_entropy():
    logits = torch.randn(1, 3, 5)
    tokens = torch.tensor([[4, 2, 3]])
    expected = -(torch.log_softmax(logits[0, 0], -1)[2] + torch.log_softmax(logits[0, 1], -1)[3]) / 2
    assert ar_loss(logits, tokens).item() == pytest.approx(expected.item(), rel=1e-6)


def test_masking_follows_the_requested_distribution():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, 50, (4000, 400), generator=g)
    eps = 0.1
    noisy, masked, p_mask = forward_process(tokens, MASK, eps, generator=g)
    ratio = masked.float().mean(1)  # per sequence: close to its p_mask
    assert torch.all((noisy == MASK) == masked)
    assert torch.all(noisy[~masked] == tokens[~masked])
    assert (ratio - p_mask[:, 0]).abs().max() < 0.1
    # p_mask = (1 - eps) t + eps with t ~ U(0, 1): uniform on [eps, 1]
    p = p_mask[:, 0]
    assert p.min() >= eps and p.max() <= 1
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert torch.quantile(p, q).item() == pytest.approx(eps + (1 - eps) * q, abs=0.03)
    assert ratio.mean().item() == pytest.approx((1 + eps) / 2, abs=0.01)


def test_masking_spares_the_prompt():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(2, 50, (500, 20), generator=g)
    prompt_len = torch.randint(1, 19, (500,), generator=g)
    allowed = response_mask(prompt_len, 20)
    _, masked, _ = forward_process(tokens, MASK, 1e-3, allowed, generator=g)
    assert not masked[~allowed].any()
    assert masked[allowed].float().mean().item() == pytest.approx(0.5, abs=0.03)


class Uniform(torch.nn.Module):
    """Equal logits everywhere: every masked token costs exactly log V."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, x):
        return torch.zeros(*x.shape, self.vocab)


def test_bound_of_a_uniform_model_is_length_times_log_vocab():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, 50, (6, 24), generator=g)
    nll, hits, count = bound_draws(Uniform(50), tokens, MASK, mc=5, generator=g)
    assert torch.allclose(nll, torch.full((6,), 24 * math.log(50), dtype=torch.float64))
    assert 6 * 5 <= count <= 6 * 5 * 24
    prompt_len = torch.tensor([3, 5, 10, 20, 23, 1])
    nll, _, _ = bound_draws(Uniform(50), tokens, MASK, 5, g, response_mask(prompt_len, 24))
    assert torch.allclose(nll, ((24 - prompt_len) * math.log(50)).double())


def test_transfer_schedule_spreads_tokens_evenly():
    s = transfer_schedule(torch.tensor([16, 7, 0]), 4)
    assert s.tolist() == [[4, 4, 4, 4], [2, 2, 2, 1], [0, 0, 0, 0]]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampling_fills_every_mask_block_by_block(temperature):
    model = tiny()
    prompt = torch.randint(2, 50, (3, 5))
    trace: list = []
    out = generate(
        model,
        prompt,
        gen_length=12,
        block_length=4,
        steps=6,
        mask_id=MASK,
        temperature=temperature,
        generator=torch.Generator().manual_seed(0),
        trace=trace,
    )
    assert out.shape == (3, 17)
    assert not (out == MASK).any()  # no mask token left
    assert torch.equal(out[:, :5], prompt)  # the prompt is kept
    assert len(trace) == 6
    before = torch.cat([prompt, torch.full((3, 12), MASK)], 1)
    for snapshot in trace:
        gen = (snapshot[:, 5:] == MASK).view(3, 3, 4)  # [B, block, position]
        for b in range(3):
            for blk in range(2):  # a block with masks left: later ones untouched
                if gen[b, blk].any():
                    assert gen[b, blk + 1 :].all()
        fixed = (before == MASK) & (snapshot != MASK)
        assert fixed.sum(1).tolist() == [2, 2, 2]  # 4 tokens per block over 2 steps
        assert torch.equal(snapshot[before != MASK], before[before != MASK])  # nothing is unfixed
        before = snapshot


def test_sampling_checks_blocks_and_steps():
    with pytest.raises(ValueError, match="multiple of block_length"):
        generate(tiny(), torch.zeros(1, 2, dtype=torch.long), 10, 4, 4, MASK)
    with pytest.raises(ValueError, match="multiple of the 3 blocks"):
        generate(tiny(), torch.zeros(1, 2, dtype=torch.long), 12, 4, 4, MASK)


def test_diffusion_attends_both_ways_and_the_baseline_only_back():
    x = torch.randint(2, 50, (1, 16))
    y = x.clone()
    y[0, 10] = (x[0, 10] + 1) % 48 + 2  # change a later token
    for objective, changes_earlier in (("diffusion", True), ("autoregressive", False)):
        model = tiny(objective)
        with torch.no_grad():
            a, b = model(x), model(y)
        assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6) is not changes_earlier


def test_model_needs_the_tokenizers_vocabulary():
    with pytest.raises(ValueError, match="model.vocab_size"):
        MDLM(MDLMModelConfig())


def test_rotary_scores_depend_only_on_the_offset():
    cos, sin = rotary_tables(16, 8)
    q, k = torch.randn(8), torch.randn(8)

    def score(i, j):  # query at position i, key at position j
        qs = apply_rotary(q.expand(1, 1, 16, 8), cos, sin)[0, 0, i]
        ks = apply_rotary(k.expand(1, 1, 16, 8), cos, sin)[0, 0, j]
        return (qs @ ks).item()

    assert score(3, 1) == pytest.approx(score(12, 10), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    norms = apply_rotary(q.expand(1, 1, 16, 8), cos, sin).norm(dim=-1)
    assert torch.allclose(norms, q.norm().expand_as(norms), rtol=1e-5)
