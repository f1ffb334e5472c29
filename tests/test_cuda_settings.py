"""The attacks turn off torch's cuDNN attention backend (it crashed the first backward of a process on an
H100, docs/PERFORMANCE.md); an environment variable keeps it."""

import pytest
import torch

from decontext.cli.attack import main as attack_main
from decontext.cli.common import avoid_cudnn_attention


@pytest.fixture
def restore_cudnn_sdp():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    yield
    torch.backends.cuda.enable_cudnn_sdp(before)


def test_avoid_cudnn_attention_turns_the_backend_off_unless_asked_to_keep_it(monkeypatch, restore_cudnn_sdp):
    torch.backends.cuda.enable_cudnn_sdp(True)
    monkeypatch.setenv("DECONTEXT_CUDNN_SDPA", "1")
    assert avoid_cudnn_attention() is False and torch.backends.cuda.cudnn_sdp_enabled()
    monkeypatch.delenv("DECONTEXT_CUDNN_SDPA")
    assert avoid_cudnn_attention() is True and not torch.backends.cuda.cudnn_sdp_enabled()
    assert (
        torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    )  # the others stay


def test_every_attack_run_turns_it_off(tmp_path, monkeypatch, restore_cudnn_sdp, capsys):
    from PIL import Image

    torch.backends.cuda.enable_cudnn_sdp(True)
    monkeypatch.delenv("DECONTEXT_CUDNN_SDPA", raising=False)
    code = attack_main(
        family="flux_kontext",
        argv=["--model", "tiny", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "out")],
    )
    assert code == 2 and "missing" in capsys.readouterr().err  # a flag error answers before torch is even imported ...
    assert torch.backends.cuda.cudnn_sdp_enabled()
    Image.new("RGB", (32, 32), (120, 80, 40)).save(tmp_path / "a.png")
    code = attack_main(
        family="flux_kontext",
        argv=[
            "--model",
            "tiny",
            "--input",
            str(tmp_path / "a.png"),
            "--output",
            str(tmp_path / "out"),
            "--steps",
            "1",
            "--measure-draws",
            "0",
            "--no-progress",
        ],
    )
    assert code == 0  # ... and a run that starts turns the backend off before any model loads
    assert not torch.backends.cuda.cudnn_sdp_enabled()
