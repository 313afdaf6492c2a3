"""MLA's head-gradient projection: its algebra, and that training really applies it."""

import pytest
import torch

from training.config import ModelConfig, TrainConfig
from training.distributed import World
from training.methods.mla import HeadProjector, MLATrainer
from training.models import build_model


def test_projected_gradient_is_orthogonal_to_stored_directions() -> None:
    torch.manual_seed(0)
    dim, n_dirs = 16, 5
    proj = HeadProjector(dim, alpha=1e-8)
    dirs = torch.randn(n_dirs, dim)
    for r in dirs:
        proj.update(r)
    grad = torch.randn(10, dim)
    projected = proj.project_(grad.clone())
    # Every row of the projected gradient is orthogonal to each stored feature direction ...
    assert torch.allclose(projected @ dirs.T, torch.zeros(10, n_dirs), atol=1e-4)
    # ... and a direction orthogonal to all of them passes unchanged.
    q, _ = torch.linalg.qr(torch.cat([dirs.T, torch.randn(dim, 1)], dim=1))
    free = q[:, -1]
    assert torch.allclose(proj.project_(free[None].clone()), free[None], atol=1e-4)


def test_update_is_the_recursive_formula_with_a_scalar_denominator() -> None:
    torch.manual_seed(1)
    dim, alpha = 6, 0.5
    proj = HeadProjector(dim, alpha)
    p_ref = torch.eye(dim, dtype=torch.float64)
    for _ in range(4):
        r = torch.randn(dim, dtype=torch.float64)
        r_unit = r / r.norm()  # directions are folded in, whatever the features' scale
        k = p_ref @ r_unit
        p_ref = p_ref - torch.outer(k, k) / (alpha + r_unit @ p_ref @ r_unit)
        proj.update(r)
    assert torch.allclose(proj.P, p_ref)
    # P stays symmetric and its eigenvalues in (0, 1]: a (soft) projector, never an amplifier.
    eig = torch.linalg.eigvalsh(proj.P)
    assert torch.allclose(proj.P, proj.P.T)
    assert eig.min() > 0
    assert eig.max() <= 1 + 1e-9
    with pytest.raises(ValueError, match="alpha"):
        HeadProjector(dim, 0.0)


def test_alpha_means_the_same_at_any_feature_scale() -> None:
    """The same directions at scale 1e-3 or 1e3 give the same P: alpha is relative to unit vectors."""
    dirs = torch.rand(20, 32, generator=torch.Generator().manual_seed(3))  # post-ReLU-like: all positive
    small, large = HeadProjector(32, 10.0), HeadProjector(32, 10.0)
    for r in dirs:
        small.update(1e-3 * r)
        large.update(1e3 * r)
    assert torch.allclose(small.P, large.P)
    # n folds of one direction leave it a gain of alpha / (alpha + n)
    one = HeadProjector(8, 10.0)
    e = torch.zeros(8, dtype=torch.float64)
    e[0] = 5.0
    for _ in range(30):
        one.update(e)
    assert float(one.P[0, 0]) == pytest.approx(10.0 / 40.0)
    assert one.diagnostics()["lambda_min"] == pytest.approx(0.25)
    assert one.diagnostics()["trace_over_dim"] == pytest.approx((7 + 0.25) / 8)
    before = one.P.clone()
    one.update(torch.zeros(8))  # no direction: nothing to fold
    assert torch.equal(one.P, before)


def _trainer(project: bool) -> MLATrainer:
    torch.manual_seed(0)
    cfg = ModelConfig.for_encoder(
        "small",
        [str(i) for i in range(4)],
        modalities=["audio", "video"],
        inputs={"audio": {"clip_samples": 4000}, "video": {"frames": 2, "size": 16}},
    )
    model = build_model(cfg)
    tcfg = TrainConfig(method="mla", lr=0.1, momentum=0.0, weight_decay=0.0, owm_alpha=1e-6, owm_project=project)
    return MLATrainer(model, tcfg, World(), steps_total=100)


def _batch(n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {
        "audio": torch.randn(n, 4000, generator=g) * 0.1,
        "audio_present": torch.ones(n, dtype=torch.bool),
        "video": torch.randint(0, 255, (n, 2, 16, 16, 3), generator=g, dtype=torch.uint8),
        "video_present": torch.ones(n, dtype=torch.bool),
        "label": torch.randint(0, 4, (n,), generator=g),
    }


def test_mla_training_applies_the_projection() -> None:
    """Record the head's inputs and its updates: with the projection on, the head never moves
    along a mean-feature direction it has already seen; without it, it does."""
    moved_along_old: dict[bool, float] = {}
    for project in (True, False):
        trainer = _trainer(project)
        head = trainer.model.head("audio")
        seen: list[torch.Tensor] = []
        head.register_forward_hook(lambda _m, inputs, _out, _seen=seen: _seen.append(inputs[0].detach().mean(0)))
        worst = 0.0
        for _ in range(3):
            w_before = head.weight.detach().clone()
            old = torch.stack(seen) if seen else None
            trainer.step(_batch())
            if old is not None:
                delta = head.weight.detach() - w_before
                worst = max(worst, float((delta @ old.T).abs().max() / delta.norm()))
        moved_along_old[project] = worst
        eye = torch.eye(trainer.model.feature_dim, dtype=torch.float64)
        if project:
            assert trainer.projector.updates == len(seen) == 6  # two modalities x three steps
            assert not torch.allclose(trainer.projector.P, eye)
        else:
            assert trainer.projector.updates == 0
            assert torch.equal(trainer.projector.P, eye)
    assert moved_along_old[True] < 1e-3
    assert moved_along_old[False] > 1e-2


def test_mla_head_has_no_momentum_or_decay() -> None:
    trainer = _trainer(True)
    head_ids = {id(p) for p in trainer.model.head("audio").parameters()}
    for group in trainer.optimizer.param_groups:
        if {id(p) for p in group["params"]} == head_ids:
            assert group["momentum"] == 0.0
            assert group["weight_decay"] == 0.0
            break
    else:
        pytest.fail("the shared head has no parameter group of its own")
