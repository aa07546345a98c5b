import pytest
import torch

from mhc_lm.model import MhcLmForCausalLM

from .helpers import MODES, tiny_config


@pytest.mark.parametrize("mode", MODES)
def test_left_padded_batch_generates_like_single_prompts(mode):
    torch.manual_seed(0)
    model = MhcLmForCausalLM(tiny_config(mode)).eval()
    long, short = torch.randint(3, 97, (1, 7)), torch.randint(3, 97, (1, 4))
    batch = torch.cat([long, torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    with torch.no_grad():
        out = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        alone_long = model.generate(long, max_new_tokens=6, do_sample=False)
        alone_short = model.generate(short, max_new_tokens=6, do_sample=False)
    assert torch.equal(out[0, 7:], alone_long[0, 7:])
    assert torch.equal(out[1, 7:], alone_short[0, 4:])


@pytest.mark.parametrize("mode", ["mhc", "grid"])
def test_gradient_checkpointing_gives_same_gradients(mode):
    torch.manual_seed(0)
    model = MhcLmForCausalLM(tiny_config(mode)).train()
    ids = torch.randint(3, 97, (2, 9))
    model(ids, labels=ids).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model(ids, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], atol=1e-6, rtol=1e-5, msg=n)


def test_shift_labels_equals_hf_labels():
    torch.manual_seed(0)
    model = MhcLmForCausalLM(tiny_config("hc")).eval()
    window = torch.randint(3, 97, (2, 11))
    ids, targets = window[:, :-1], window[:, 1:]
    with torch.no_grad():
        a = model(ids, shift_labels=targets).loss
        b = model(window, labels=window).loss  # HF shifts inside: the same 10 predictions + none for the last
        logits = model(ids).logits
    manual = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), targets.reshape(-1))
    torch.testing.assert_close(a, manual)
    torch.testing.assert_close(b, manual)
