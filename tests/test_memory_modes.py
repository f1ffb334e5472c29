"""Memory modes: gradient checkpointing gives the same gradient; quantisation errors clearly off-GPU."""

import pytest
import torch

from decontext.editors import load_editor
from decontext.editors.flux_kontext import FluxKontextEditor
from decontext.methods.decontext import DeContext


def _share_gradient(editor):
    method = DeContext(prompts=["add a hat"], release_text_encoders=False)
    x = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    with method.session(editor):  # the probes stay for the backward, which re-runs checkpointed blocks
        loss, _ = method.loss(editor, x, (48, 64), 0, [torch.Generator().manual_seed(3)])
        (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def test_gradient_checkpointing_gives_the_same_gradient():
    plain = FluxKontextEditor.tiny(seed=5)
    checkpointed = FluxKontextEditor.tiny(seed=5)
    checkpointed.enable_gradient_checkpointing()
    assert checkpointed.transformer.is_gradient_checkpointing
    loss_a, grad_a = _share_gradient(plain)
    loss_b, grad_b = _share_gradient(checkpointed)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grad_a.abs().sum() > 0
    assert torch.allclose(grad_a, grad_b, atol=1e-6, rtol=1e-4)


def test_quantisation_needs_a_gpu_and_says_so(tmp_path):
    FluxKontextEditor.tiny().pipe.save_pretrained(tmp_path / "model")
    for bits in ("8bit", "4bit"):
        with pytest.raises(ValueError, match="CUDA GPU"):
            FluxKontextEditor.from_pretrained(tmp_path / "model", dtype=torch.float32, device="cpu", quantize=bits)
    with pytest.raises(ValueError, match="8bit"):
        FluxKontextEditor.from_pretrained(tmp_path / "model", dtype=torch.float32, device="cpu", quantize="3bit")
    with pytest.raises(ValueError, match="tiny"):
        load_editor("tiny", "flux_kontext", "cpu", quantize="4bit")


def test_offload_needs_a_gpu():
    with pytest.raises(ValueError, match="offload"):
        load_editor("tiny", "flux_kontext", "cpu", offload=True)


def test_gradient_checkpointing_gives_the_same_gradient_on_step1x(tmp_path):
    from decontext.editors.step1x_edit import Step1XEditor
    from decontext.editors.tiny import write_tiny_step1x_folder

    folder = write_tiny_step1x_folder(tmp_path / "tiny", seed=2)
    plain = Step1XEditor.from_pretrained(folder, device="cpu", dtype=torch.float32)
    checkpointed = Step1XEditor.from_pretrained(folder, device="cpu", dtype=torch.float32, vlm_offload=True)
    checkpointed.enable_gradient_checkpointing()
    loss_a, grad_a = _share_gradient(plain)
    loss_b, grad_b = _share_gradient(checkpointed)
    assert torch.allclose(loss_a, loss_b, atol=1e-6) and grad_a.abs().sum() > 0
    assert torch.allclose(grad_a, grad_b, atol=1e-6, rtol=1e-4)
