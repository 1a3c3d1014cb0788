"""Each loss creates the logit parameters it scores with (and no others); state dicts written when the model
held them as `logit_scale` / `logit_bias` load into the loss's own."""

import math

import pytest
import torch

from jointspace.losses import LOSSES, LossContext, loss_class
from jointspace.model import JointModel
from jointspace.towers import build_tower


def _v(t: torch.Tensor) -> float:
    return t.detach().item()


@pytest.mark.parametrize("name, params", [("infonce", {"log_scale"}), ("siglip", {"log_scale", "bias"}),
                                          ("triplet", set()), ("pml", set())])
def test_a_loss_creates_the_parameters_it_reads(name, params):
    logits = loss_class(name).logit_parameters(0.05, True, 50.0)
    assert {n for n, _ in logits.named_parameters()} == params == set(logits.state_dict())
    assert _v(logits.scale()) == pytest.approx(20.0)  # a constant where no parameter: the initial scale
    if "bias" in params:
        assert _v(logits.bias) == -10.0  # SigLIP's initial bias, as before
    assert logits.log_scale.requires_grad == ("log_scale" in params)


def test_the_scale_is_clamped_and_fixed_without_learn_temperature():
    logits = loss_class("infonce").logit_parameters(0.001, False, 100.0)
    assert not logits.log_scale.requires_grad and _v(logits.scale()) == pytest.approx(100.0)
    logits.clamp_()
    assert _v(logits.log_scale) == pytest.approx(math.log(100.0))
    ctx = LossContext.from_logits(loss_class("siglip").logit_parameters(), detach=True)
    assert not ctx.logit_scale.requires_grad and not ctx.logit_bias.requires_grad


def test_every_registered_loss_has_parameters_exactly_for_what_it_reads():
    for name, cls in LOSSES.items():
        own = set(cls.logit_parameters().state_dict())
        assert own == {n for n, used in (("log_scale", cls.uses_scale), ("bias", cls.uses_bias)) if used}, name


def _model(loss: str) -> JointModel:
    torch.manual_seed(0)
    tower = build_tower("cnn", in_chans=1, channels=[4, 8], norm="group")
    return JointModel({"image": tower}, embed_dim=8, logits=loss_class(loss).logit_parameters())


def _old_state(model: JointModel, scale: float = 2.5, bias: float = -3.0) -> dict[str, torch.Tensor]:
    """The model's state dict as written before the parameters moved to the loss: the model's own
    `logit_scale` and `logit_bias` (every run had both)."""
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("logits.")}
    return {**state, "logit_scale": torch.tensor(scale), "logit_bias": torch.tensor(bias)}


@pytest.mark.parametrize("loss", ["infonce", "siglip", "triplet"])
def test_a_state_dict_with_the_old_keys_loads(loss):
    old = _old_state(_model(loss))
    model = _model(loss)
    model.heads["image"].weight.data.zero_()
    model.load_state_dict(old)  # strict: renamed, and what the loss has no place for dropped
    assert torch.equal(model.heads["image"].weight, old["heads.image.weight"])
    assert "logit_scale" in old and "logit_bias" in old  # the caller's dict is left as it was
    if loss_class(loss).uses_scale:
        assert _v(model.logits.log_scale) == 2.5
    else:
        assert _v(model.logits.log_scale) == pytest.approx(math.log(1 / 0.07))  # its constant
    if loss_class(loss).uses_bias:
        assert _v(model.logits.bias) == -3.0
    assert model.state_dict().keys() == _model(loss).state_dict().keys()


def test_old_keys_load_under_a_prefix():
    """A model inside another module (its keys prefixed) is renamed under its prefix."""
    outer = torch.nn.ModuleDict({"joint": _model("siglip")})
    old = {f"joint.{k}": v for k, v in _old_state(_model("siglip")).items()}
    outer.load_state_dict(old)
    assert _v(outer["joint"].logits.log_scale) == 2.5 and _v(outer["joint"].logits.bias) == -3.0


def test_new_keys_load_as_they_are():
    model = _model("siglip")
    with torch.no_grad():
        model.logits.log_scale.fill_(1.5)
    fresh = _model("siglip")
    fresh.load_state_dict(model.state_dict())
    assert _v(fresh.logits.log_scale) == 1.5


def test_the_logit_parameters_lead_the_model_parameters():
    """In `parameters()` they come first, where the model's own `logit_scale` / `logit_bias` were: the
    optimizer's groups and the clipping norm's sum keep their order, so runs train to the same weights."""
    model = _model("siglip")
    first = list(model.parameters())[:2]
    assert first[0] is model.logits.log_scale and first[1] is model.logits.bias
