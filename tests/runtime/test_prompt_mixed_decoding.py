"""Mixed-task rows with different soft prompts through cached decoding and ``adapted.generate(tasks=...)``.

Each row must decode as it does alone under its task (batch of one, after
``use(task)``), and cached decoding must equal recomputing every step; on
Llama, GPT-2 (absolute positions: explicit per-row positions) and T5 (the
encoder runs on the input rows, the decoder on the beams).
"""

from __future__ import annotations

import pytest
import torch

import adaptlang
from adaptlang.errors import RuntimeApplyError
from tests.runtime.prompt_support import cache_keyword, greedy_steps, mixed_setup, sharpen


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_mixed_rows_with_different_prompts_decode_with_a_cache(rt, family):
    model, adapted, tasks, ids, mask = mixed_setup(rt, family)
    key = cache_keyword(model)
    with torch.no_grad():
        cached = greedy_steps(lambda **kw: adapted(**kw, tasks=tasks), ids, mask, 4, key)
        plain = greedy_steps(lambda **kw: adapted(**kw, tasks=tasks), ids, mask, 4)
    assert torch.equal(cached[0], plain[0])
    for x, y in zip(cached[1], plain[1]):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    for row, task in enumerate(tasks):  # each row as it decodes alone under its task
        with torch.no_grad():
            if task is None:
                adapted.use("c")
                alone = greedy_steps(lambda **kw: adapted(**kw, tasks=[None]), ids[row:row + 1], mask[row:row + 1], 4, key)
            else:
                adapted.use(task)
                alone = greedy_steps(adapted, ids[row:row + 1], mask[row:row + 1], 4, key)
        assert torch.equal(alone[0][0], cached[0][row]), f"row {row} ({task})"
        for x, y in zip(alone[1], cached[1]):
            torch.testing.assert_close(x[0], y[row], atol=1e-5, rtol=0)


T5_MIXED = """adaptlang 1
prompt short { tokens 2; init random }
prompt long  { tokens 4; init random }
task a = short
task b = long
"""


def test_t5_mixed_rows_with_different_prompts_decode_like_each_row_alone(rt):
    model = rt.tiny_t5()
    sharpen(model)
    adapted = adaptlang.apply(model, T5_MIXED, task="a")
    with torch.no_grad():
        for name in ("short", "long"):
            for p in adapted.delta_parameters(name).values():
                p.mul_(3.0)
    tasks = ["a", "b", None]
    ids = torch.tensor([[0, 0, 5, 6, 7], [9, 10, 11, 12, 13], [0, 3, 4, 5, 6]])
    mask = (ids != 0).long()
    start = model.config.decoder_start_token_id

    def decode(call, ids, mask, steps, cached):
        dec = torch.full((ids.shape[0], 1), start)
        out = call(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=cached)
        logits = [out.logits[:, -1]]
        encoded = (out.encoder_last_hidden_state,)  # a tuple of our own: found through its tensor
        for _ in range(steps - 1):
            nxt = logits[-1].argmax(-1, keepdim=True)
            dec = torch.cat([dec, nxt], 1)
            if cached:
                out = call(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=nxt,
                           past_key_values=out.past_key_values, use_cache=True)
            else:
                out = call(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False)
            logits.append(out.logits[:, -1])
        return torch.cat([dec, logits[-1].argmax(-1, keepdim=True)], 1), logits

    with torch.no_grad():
        cached = decode(lambda **kw: adapted(**kw, tasks=tasks), ids, mask, 4, True)
        plain = decode(lambda **kw: adapted(**kw, tasks=tasks), ids, mask, 4, False)
        assert torch.equal(cached[0], plain[0])
        for x, y in zip(cached[1], plain[1]):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
        for row, task in enumerate(tasks):
            alone = decode(lambda **kw: adapted(**kw, tasks=[task]), ids[row:row + 1], mask[row:row + 1], 4, True)
            assert torch.equal(alone[0][0], cached[0][row]), f"row {row} ({task})"
            for x, y in zip(alone[1], cached[1]):
                torch.testing.assert_close(x[0], y[row], atol=1e-5, rtol=1e-6)  # logits ~50 (sharpened)
        # An encoder output the prompt did not make, with a mask that does not fit it: refused, not guessed.
        with pytest.raises(RuntimeApplyError, match="not one the encoder computed with a prompt"):
            adapted(encoder_outputs=(torch.zeros(3, 9, 32),), attention_mask=mask,
                    decoder_input_ids=torch.zeros(3, 1, dtype=torch.long))


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize("beams", [1, 2])
def test_generate_with_a_task_per_row_equals_each_row_alone(rt, family, beams):
    """``adapted.generate(..., tasks=[...])``: rows with different prompts (and a LoRA) through generate().

    Reference: each row generated alone, batch of one, after ``use(task)``.
    """
    model, adapted, tasks, ids, mask = mixed_setup(rt, family)
    kw = dict(max_new_tokens=4, do_sample=False, num_beams=beams, pad_token_id=0, output_scores=True,
              return_dict_in_generate=True)
    mixed = adapted.generate(input_ids=ids, attention_mask=mask, tasks=tasks, **kw)
    assert adapted.active_task == "c"
    for row, task in enumerate(tasks):
        one = dict(input_ids=ids[row:row + 1], attention_mask=mask[row:row + 1], **kw)
        if task is None:
            alone = adapted.generate(tasks=[None], **one)
        else:
            with adapted.use(task):
                alone = adapted.generate(**one)
        got = mixed.sequences[row]
        want = alone.sequences[0]
        assert torch.equal(got[: want.shape[0]], want), f"row {row} ({task})"
        if beams > 1:
            torch.testing.assert_close(mixed.sequences_scores[row], alone.sequences_scores[0], atol=1e-5, rtol=0)
