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


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("do_sample", [False, True])
def test_cached_generation_logits_equal_a_full_forward(mode, do_sample):
    """Every step's logits from generate (KV cache) equal a cache-free forward of the whole sequence.

    Compares logits, not tokens: a random model repeats one token, so token equality alone
    would not notice a cache that is silently dropped (as happens when generate passes the
    cache under a name the model ignores)."""
    torch.manual_seed(0)
    model = MhcLmForCausalLM(tiny_config(mode)).eval()
    prompt = torch.randint(3, 97, (2, 5))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=6, do_sample=do_sample, top_k=0, use_cache=True,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        full = model(out.sequences, use_cache=False).logits
    assert len(out.logits) == 6
    for i, step_logits in enumerate(out.logits):
        torch.testing.assert_close(step_logits, full[:, prompt.shape[1] - 1 + i], atol=1e-4, rtol=1e-4)
