"""The context embedding g: sequence layout, [SEG], caching, offline encoders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.errors import ConfigurationError, ModelNotFoundError
from model.network.config import preset
from model.network.context import ContextCache, PromptContext, context_key, contexts_for
from model.text.encoders import load_text_encoder, tiny_llama

NOTE_L = "N1, cT2, breast conserving surgery, left side"
NOTE_R = "N0, cT1, total mastectomy surgery, right side"


def _ctx(tuning: str = "multi_prompt") -> PromptContext:
    return PromptContext(preset("tiny", tuning=tuning), tiny_llama())


def test_g_shape_and_batch_independence() -> None:
    ctx = _ctx().eval()
    with torch.no_grad():
        both = ctx([NOTE_L, "N0"])
        alone = ctx([NOTE_L])
        short = ctx(["N0"])
    assert both.shape == (2, 2, 64)
    torch.testing.assert_close(both[0], alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[1], short[0], rtol=1e-4, atol=1e-5)


def test_different_notes_and_prompt_sets_give_different_g() -> None:
    ctx = _ctx().eval()
    with torch.no_grad():
        g = ctx([NOTE_L, NOTE_R])
    assert not torch.allclose(g[0], g[1])
    assert not torch.allclose(g[0, 0], g[0, 1]), "each prompt set reads out its own g"


def test_seg_embedding_is_trained_and_read_out() -> None:
    ctx = _ctx()
    g = ctx([NOTE_L])
    g.sum().backward()
    assert ctx.seg.grad is not None and ctx.seg.grad.abs().sum() > 0
    assert ctx.prompts is not None and ctx.prompts.grad is not None
    assert "seg" in ctx.text_state() and "prompts" in ctx.text_state()
    for p in ctx.encoder.model.parameters():
        assert not p.requires_grad, "the language model stays frozen"


def test_seg_changes_g() -> None:
    ctx = _ctx().eval()
    with torch.no_grad():
        before = ctx([NOTE_L]).clone()
        ctx.seg.add_(1.0)
        after = ctx([NOTE_L])
    assert not torch.allclose(before, after)


def test_none_mode_trains_nothing_and_lora_trains_adapters() -> None:
    none = _ctx("none")
    assert not [p for p in none.parameters() if p.requires_grad]
    lora = _ctx("lora")
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and "seg" in trainable


def test_cached_note_costs_zero_forward_passes() -> None:
    ctx = _ctx().eval()
    cache = ContextCache()
    first = contexts_for(ctx, [NOTE_L, NOTE_R, NOTE_L], cache)
    assert ctx.forward_calls == 1, "uncached notes are computed in one batch"
    again = contexts_for(ctx, [NOTE_R, NOTE_L], cache)
    assert ctx.forward_calls == 1, "a cached note costs 0 LLM forward passes"
    torch.testing.assert_close(again[1], first[0])


def test_context_key_depends_on_encoder_weights_and_text() -> None:
    base = context_key("enc", "w1", NOTE_L)
    assert base == context_key("enc", "w1", NOTE_L)
    assert (
        len(
            {
                base,
                context_key("enc2", "w1", NOTE_L),
                context_key("enc", "w2", NOTE_L),
                context_key("enc", "w1", NOTE_R),
            }
        )
        == 4
    )


def test_missing_encoder_folder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "Llama-2-7b-chat-hf"
    with pytest.raises(ModelNotFoundError, match="Llama-2-7b-chat-hf"):
        load_text_encoder(missing)


def test_unreadable_encoder_folder_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelNotFoundError, match="broken"):
        load_text_encoder(folder)


def test_width_mismatch_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        PromptContext(preset("tiny", text_dim=32), tiny_llama())


def test_minilm_from_its_wheel() -> None:
    enc = load_text_encoder("minilm")
    assert enc.hidden_size == 384
    ctx = PromptContext(preset("tiny", text_dim=384), enc).eval()
    with torch.no_grad():
        g = ctx([NOTE_L, NOTE_R])
    assert g.shape == (2, 2, 384)
    assert not torch.allclose(g[0], g[1])


@pytest.mark.slow
def test_smollm2_from_its_wheel_converted_once() -> None:
    enc = load_text_encoder("smollm2")
    assert enc.hidden_size == 576
    assert enc.bos_id is not None
    ctx = PromptContext(preset("cpu"), enc).eval()
    with torch.no_grad():
        g = ctx([NOTE_L, NOTE_R])
    assert g.shape == (2, 2, 576)
    assert torch.isfinite(g).all()
    again = load_text_encoder("smollm2")
    assert again.identity == enc.identity


def test_digest_follows_the_weights() -> None:
    ctx = _ctx().eval()
    before = ctx.digest()
    assert ctx.digest() == before
    state = {k: v.clone() for k, v in ctx.state_dict().items()}
    state["seg"] += 1.0
    ctx.load_state_dict(state)
    assert ctx.digest() != before, "new weights must give new cache keys"
