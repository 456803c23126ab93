"""The defect-aware training recipe: crops, training scale, sandwich + distillation, EMA, the
time-budget planner. Small generated data, deterministic, no timing assertions."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from autonad_edge.data import load_dataset
from autonad_edge.data.cache import downscale_mask, training_scale_hw
from autonad_edge.data.crops import CropConfig, CropSampler, crop_grid, CropSpec
from autonad_edge.search.budget import (
    REPLAN_MARGIN, BudgetError, StageCosts, evaluations, plan_budget, retrain_epochs_left, retrain_time_limit_s,
    scale_epochs, supernet_epochs_within, supernet_s, val_probe,
)
from autonad_edge.search.planning import supernet_time_limit
from autonad_edge.space import SearchSpace
from autonad_edge.training.config import SUPERNET_EVALS, SupernetConfig, eval_every_for, val_passes
from autonad_edge.training.ema import WeightAverage
from autonad_edge.training.supernet_trainer import SupernetTrainer


def _masks_with_rare_class() -> list[np.ndarray]:
    """Class 1 on 12 images (large blobs), class 2 on 3 images (a 1-px line): very unequal."""
    masks = []
    for i in range(16):
        m = np.zeros((40, 70), np.uint8)
        if i < 12:
            m[5:30, 10:50] = 1
        if i >= 13:
            m[20, 5:60] = 2
        masks.append(m)
    return masks


def test_crop_sampler_hits_defects_at_the_configured_rate_and_balances_classes():
    masks = _masks_with_rare_class()
    sampler = CropSampler(masks, 3, CropConfig((16, 16), defect_share=0.6))
    specs = [sampler(i % len(masks), np.random.default_rng([0, i])) for i in range(2000)]
    defect = [s for s in specs if s.defect_class is not None]
    assert abs(len(defect) / len(specs) - 0.6) < 0.04
    counts = Counter(s.defect_class for s in defect)
    # The 1-px line on 3 images is picked as often as the blobs on 12.
    assert set(counts) == {1, 2} and abs(counts[1] - counts[2]) < 0.1 * len(defect)
    for s in defect:  # the centre lies within the jitter of a pixel of its class
        y, x = int(s.centre_y), int(s.centre_x)
        window = masks[s.image][max(0, y - 5): y + 6, max(0, x - 5): x + 6]
        assert (window == s.defect_class).any()
    # Uniform crops visit the item's own image.
    assert all(s.image == i % len(masks) for i, s in enumerate(specs) if s.defect_class is None)


def test_crop_without_augmentation_is_the_exact_window():
    image = torch.arange(30 * 50, dtype=torch.float32).view(1, 1, 30, 50)
    spec = CropSpec(0, centre_y=12.0, centre_x=20.0, defect_class=None)
    grid = crop_grid(spec, (30, 50), (8, 10))
    crop = torch.nn.functional.grid_sample(image, grid, mode="nearest", align_corners=False)[0, 0]
    assert torch.equal(crop, image[0, 0, 8:16, 15:25])
    # Near the border the window is clamped inside the image rather than padded.
    edge = crop_grid(CropSpec(0, 1.0, 49.0, None), (30, 50), (8, 10))
    crop = torch.nn.functional.grid_sample(image, edge, mode="nearest", align_corners=False)[0, 0]
    assert torch.equal(crop, image[0, 0, 0:8, 40:50])


def test_training_crops_are_fixed_size_from_mixed_size_images(tmp_path):
    from autonad_edge.data.synthetic import write_synthetic_voc

    root = tmp_path / "voc"
    write_synthetic_voc(root, count=6, image_size=(48, 80), seed=0)
    data = load_dataset(root, fmt="voc", image_size=32, max_side=64)
    assert data.train.raw(0)[1].shape == training_scale_hw(48, 80, 64) == (38, 64)
    crops = data.train_crops(seed=0, crop=CropConfig((32, 32), 0.5))
    crops.set_epoch(1)
    image, mask = crops[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    again = data.train_crops(seed=0, crop=CropConfig((32, 32), 0.5))
    again.set_epoch(1)
    assert torch.equal(again[0][0], image)  # deterministic in (seed, epoch, index)


def test_zoomed_out_crops_keep_a_thin_crack_labelled_where_the_image_shows_it():
    """A zoomed-out crop (scale < 1) samples the mask less than once a pixel: nearest sampling
    used to drop a 1-px crack from the labels of 10 in 240 crack-centred crops (and cut it into
    a median of 6 pieces) while the image still showed the dark line."""
    from scipy import ndimage

    from autonad_edge.data.cache import build_cache, label_histogram
    from autonad_edge.data.dataset import SegmentationData
    from autonad_edge.data.transforms import AugmentationConfig

    samples, ids = [], []
    for i in range(4):
        image = np.full((256, 256, 1), 128, np.uint8)
        mask = np.zeros((256, 256), np.uint8)
        mask[100 + i, :] = 1
        image[100 + i, :, 0] = 20
        samples.append((image, mask, (256, 256), label_histogram(mask)))
        ids.append(f"s{i}")
    cache = build_cache(ids, samples, ["background", "crack"], None, [None] * 4)
    data = SegmentationData(cache, {"train": ids, "val": [], "test": []}, fmt="voc", root=None, seed=0,
                            ratios=(1, 0, 0), split_source="test", image_size=(64, 64))
    crops = data.train_crops(seed=0, crop=CropConfig((64, 64), defect_share=1.0),
                             augmentation=AugmentationConfig(scale=(0.75, 0.9)))
    pieces = []
    for epoch in range(15):
        crops.set_epoch(epoch)
        for i in range(len(crops)):
            _, labels = crops[i]
            pieces.append(ndimage.label((labels == 1).numpy(), structure=np.ones((3, 3)))[1])
            assert (labels == 1).sum() < 3 * 64, "and it stays thin"
    assert pieces and all(n == 1 for n in pieces), pieces


def test_downscaling_keeps_a_one_pixel_crack_connected():
    mask = np.zeros((400, 600), np.uint8)
    rows = (np.arange(600) * 0.37 + 100).astype(int)
    mask[rows, np.arange(600)] = 3
    small = downscale_mask(mask, (100, 150))
    # Every column of the 4x smaller mask still holds the crack: no dotted remains.
    assert (small == 3).any(axis=0).all()
    assert (small == 3).sum() < 4 * 150  # and it stays thin
    assert training_scale_hw(400, 600, 150) == (100, 150) and training_scale_hw(40, 60, 150) == (40, 60)


@pytest.mark.parametrize("factor", [6, 12.5])
def test_a_shrunk_crack_stays_one_line_at_large_factors(factor):
    # At 6x a line crossing half a box's side covers it by exactly 3/36: measured in 8 bits it
    # rounded below the 1/12 threshold and the crack fell into eleven pieces.
    from scipy import ndimage

    mask = np.zeros((600, 600), np.uint8)
    columns = np.arange(600)
    mask[(columns * 0.7).astype(int), columns] = 1
    side = round(600 / factor)
    small = downscale_mask(mask, (side, side))
    assert ndimage.label(small == 1, structure=np.ones((3, 3)))[1] == 1


def test_downscaling_keeps_every_small_defect():
    # 2x2 pits at a 4x shrink: one inside a source box covers it by a quarter and survives by
    # coverage; one across the corners of four boxes covers each by 1/16, and used to vanish.
    mask = np.zeros((64, 64), np.uint8)
    mask[4:6, 4:6] = 2  # inside box (1, 1)
    mask[23:25, 39:41] = 2  # across the corners of boxes (5, 9), (5, 10), (6, 9), (6, 10)
    mask[50, 50] = 1  # a single pixel of another class
    small = downscale_mask(mask, (16, 16))
    assert small[1, 1] == 2 and (small[5:7, 9:11] == 2).sum() == 1 and (small == 2).sum() == 2
    assert small[12, 12] == 1 and (small == 1).sum() == 1


def _tiny_data():
    return load_dataset(None, fmt="synthetic", image_size=32, synthetic_count=8, seed=0)


def test_sandwich_step_trains_largest_smallest_and_random_with_distillation(tmp_path):
    space = SearchSpace.named("tiny")
    data = _tiny_data()
    cfg = SupernetConfig(space="tiny", image_size=32, epochs=1, batch_size=4, sandwich=True, sandwich_random=1,
                         distill_weight=0.5, eval_every=0, max_steps_per_epoch=1)
    trainer = SupernetTrainer(cfg, data, tmp_path, space=space, quiet=True)
    trainer._setup()
    trainer._wrap()
    activated = []
    set_active = trainer.model.set_active
    trainer.model.set_active = lambda arch: (activated.append(arch), set_active(arch))[1]
    images, masks = (torch.stack(t) for t in zip(*(trainer.train_set[i] for i in range(4))))
    loss, archs = trainer.train_step(images, masks)
    assert archs[:2] == [space.largest(), space.smallest()] and len(archs) == 3
    assert activated == archs and np.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())
    # Without distillation the children learn from the labels only: another loss.
    trainer.sampler_rng.seed(0)
    trainer.config = cfg.replace(distill_weight=0.0)
    plain, _ = trainer.train_step(images, masks)
    trainer.sampler_rng.seed(0)
    trainer.config = cfg
    distilled, _ = trainer.train_step(images, masks)
    assert plain != pytest.approx(distilled)


def test_weight_average_ramps_then_follows_decay():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    ema = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # first update: decay min(0.9, 1/10) = 0.1
    assert ema.module.weight.flatten().tolist() == pytest.approx([0.9, 0.9])
    for _ in range(200):
        ema.update(model)
    assert ema.current_decay() == 0.9
    assert ema.module.weight.flatten().tolist() == pytest.approx([1.0, 1.0], abs=1e-6)


COSTS = StageCosts(supernet_step_s=0.8, retrain_step_s=0.3, val_eval_s=10.0, supernet_steps_per_epoch=35,
                   retrain_steps_per_epoch=35, latency_s=190.0, export_s=30.0)


def test_budget_plan_arithmetic_on_given_costs():
    plan = plan_budget(COSTS, 3600, population=16, generations=5, parents=5)
    # Search capped at 15 % of the budget (540 s) at 10 s an evaluation: 16 + (g - 1) * 11 <= 54.
    assert (plan.population, plan.generations) == (16, 4) and plan.search_s == evaluations(16, 4, 5) * 10.0
    assert evaluations(16, 5, 5) == 60 and evaluations(16, 1, 5) == 16  # as the search counts them
    assert plan.fixed_s == pytest.approx(190 + 30 + 0.07 * 3600)
    re_epoch = 35 * 0.3  # retraining's val passes are a fixed count, not per epoch
    re_evals = 11 * 10.0
    training = 3600 - plan.fixed_s - plan.search_s - re_evals  # 2528 s
    assert training == pytest.approx(2528)
    # Half of it (1264 s) for the supernet: 28 s an epoch, and a val pass of two subnets (20 s,
    # unmeasured here) every 3 epochs and after the last: 36 epochs, 12 passes, 1248 s; 37
    # would evaluate 13 times (1296 s).
    assert plan.supernet_epochs == 36 and plan.supernet_s == pytest.approx(36 * 28 + 12 * 20)
    assert supernet_s(COSTS, 37) == pytest.approx(37 * 28 + 13 * 20) and supernet_s(COSTS, 37) > 0.5 * training
    assert plan.retrain_epochs == int((training - plan.supernet_s) // re_epoch) == 121
    assert plan.retrain_s == pytest.approx(plan.retrain_epochs * re_epoch + re_evals)
    assert plan.total_s <= 3600
    with pytest.raises(BudgetError, match="give at least"):
        plan_budget(COSTS, 300, population=16, generations=5, parents=5)


def test_a_slow_retraining_keeps_its_minimum_epochs_inside_the_budget():
    """The supernet took its share of the training time with nothing held back for the
    retraining, whose two minimum epochs were then given anyway: with 10-s retraining steps
    and a 0.5 share, a plan for 1,000 s came to about 1,266 s."""
    slow = StageCosts(supernet_step_s=0.1, retrain_step_s=10.0, val_eval_s=1.0, supernet_steps_per_epoch=35,
                      retrain_steps_per_epoch=35, latency_s=0.0, export_s=0.0)
    plan = plan_budget(slow, 1000, population=16, generations=5, parents=5, supernet_share=0.5)
    assert plan.retrain_epochs == 2 and plan.total_s <= 1000


def test_a_shrunk_search_keeps_more_members_than_parents():
    """A tight budget shrank the population to the floor of 8, below the paper preset's 10
    parents: every generation after the first bred no child. The floor is now two above the
    parents, and a population given smaller than that is not grown."""
    tight = replace(COSTS, val_eval_s=60.0)
    plan = plan_budget(tight, 3600, population=100, generations=50, parents=10)
    assert plan.population == 12 and plan.population - 10 >= 2
    assert plan_budget(tight, 3600, population=16, generations=5, parents=5).population == 8
    assert plan_budget(tight, 3600, population=6, generations=5, parents=5).population == 6


def test_a_refused_budget_suggests_the_smallest_one_the_plan_accepts():
    """The figure is found with `plan_budget` itself, in whole minutes above the refused budget:
    worked out from the refused budget's margin and search share (and without the retraining's
    val passes), COSTS at 5 min were told 9, which the plan refused in turn."""
    sizes = dict(population=16, generations=5, parents=5)
    for costs, refused_s in ((COSTS, 300), (COSTS, 540), (replace(COSTS, latency_s=20.0, val_eval_s=2.0), 60),
                             (replace(COSTS, supernet_step_s=3.0, retrain_evals=30), 600)):
        with pytest.raises(BudgetError, match="give at least") as refused:
            plan_budget(costs, refused_s, **sizes)
        minutes = int(str(refused.value).rsplit("give at least ", 1)[1].split(" min")[0])
        assert minutes > refused_s / 60
        assert plan_budget(costs, 60 * minutes, **sizes).total_s <= 60 * minutes
        with pytest.raises(BudgetError):
            plan_budget(costs, 60 * (minutes - 1), **sizes)
    with pytest.raises(BudgetError, match="budget cannot hold"):
        plan_budget(COSTS, 540, **sizes)  # the old suggestion for 5 min
    with pytest.raises(BudgetError, match="not even a 24 h budget would"):
        plan_budget(replace(COSTS, supernet_step_s=2000.0), 3600, **sizes)


def test_the_plan_prices_epochs_at_the_capped_steps_the_trainers_take():
    """--max-steps-per-epoch caps every epoch's steps in the trainers and the race: the measured
    costs carry the cap, so a capped run is planned the epochs its short epochs fit (uncapped,
    the cpu preset's 336 images at a cap of 10 were priced at 42 steps an epoch)."""
    from autonad_edge.search.budget import measure_costs
    from autonad_edge.training.config import RetrainConfig
    from autonad_edge.training.engine import steps_per_epoch

    data = load_dataset(None, fmt="synthetic", image_size=32, synthetic_count=24, seed=0)
    space = SearchSpace.named("tiny")
    measured = {}
    for cap in (3, None):
        supernet = SupernetConfig(space="tiny", image_size=32, batch_size=2, max_steps_per_epoch=cap)
        retrain = RetrainConfig(image_size=32, batch_size=2, max_steps_per_epoch=cap)
        measured[cap] = measure_costs(supernet, retrain, space, data, units_to_time=0, subnets_to_time=0,
                                      unit_timing_s=0.0, steps=1)
    full = steps_per_epoch(len(data.train), 2)
    assert full == 8 and (measured[None].supernet_steps_per_epoch, measured[None].retrain_steps_per_epoch) == (8, 8)
    assert (measured[3].supernet_steps_per_epoch, measured[3].retrain_steps_per_epoch) == (3, 3)
    # The same step times (COSTS'), planned at the measured steps an epoch: the capped run's
    # epochs are about 8/3 as many, each priced at 3 steps.
    plans = {cap: plan_budget(replace(COSTS, supernet_steps_per_epoch=c.supernet_steps_per_epoch,
                                      retrain_steps_per_epoch=c.retrain_steps_per_epoch),
                              3600, population=16, generations=5, parents=5) for cap, c in measured.items()}
    assert plans[3].supernet_epochs > 2 * plans[None].supernet_epochs
    assert plans[3].retrain_epochs > 2 * plans[None].retrain_epochs
    assert plans[3].retrain_s == pytest.approx(plans[3].retrain_epochs * 3 * COSTS.retrain_step_s + 11 * 10.0)


def test_the_supernet_plan_counts_its_val_passes_as_the_trainer_runs_them():
    """A short run evaluates every epoch, a long one about ten times: the count is not monotone
    (19 epochs evaluate 19 times, 20 ten times), so the planner tries every epoch count."""
    assert [val_passes(e, eval_every_for(e, SUPERNET_EVALS)) for e in (1, 3, 9, 19, 20, 35)] == [1, 3, 9, 19, 10, 12]
    assert val_passes(7, 0) == 0 and val_passes(0, 3) == 0
    measured = replace(COSTS, supernet_val_s=4.0)  # a measured pass replaces two subnets' 20 s
    assert supernet_s(measured, 20) == pytest.approx(20 * 28 + 10 * 4.0)
    assert supernet_s(COSTS, 20) == pytest.approx(760) and supernet_s(COSTS, 19) > supernet_s(COSTS, 20)
    assert supernet_epochs_within(COSTS, 760, 2) == 20  # 20 fits where 19 to 27 (of 760 // 28) do not
    assert supernet_epochs_within(COSTS, 10, 2) == 2  # nothing fits: the minimum
    # A plan saved before the pass was measured reads back (its old field dropped).
    assert StageCosts.from_dict({**asdict(COSTS), "supernet_evals_per_epoch": 0.2}) == COSTS


def test_the_supernet_time_limit_is_its_planned_time_less_earlier_epochs(tmp_path):
    """`planning.supernet_time_limit` on a run directory: none without a plan or with epochs the
    user gave; the plan's supernet seconds, less the logged epochs of a stage to resume."""
    ctx = SimpleNamespace(out=tmp_path, given=frozenset())
    assert supernet_time_limit(ctx) is None
    (tmp_path / "plan.json").write_text(json.dumps({"plan": {"supernet_s": 300.0}}))
    assert supernet_time_limit(ctx) == 300.0
    (tmp_path / "supernet").mkdir()
    (tmp_path / "supernet" / "train_log.jsonl").write_text('{"epoch": 1, "time": 10.5}\n{"epoch": 2, "time": 20.0}\n')
    assert supernet_time_limit(ctx) == 300.0  # a log without a checkpoint: nothing to resume
    (tmp_path / "supernet" / "supernet.pt").write_bytes(b"")
    assert supernet_time_limit(ctx) == pytest.approx(269.5)
    assert supernet_time_limit(SimpleNamespace(out=tmp_path, given=frozenset({"supernet_epochs"}))) is None


def test_a_resumed_retraining_counts_the_seconds_its_earlier_process_spent_once(tmp_path):
    """`planning.retrain_time_limit` after an interrupted retraining: the run's clock counts the
    seconds ``stages.json`` kept for the stage (`StageLog.run`), and the logged epochs only
    where they are more (a run directory from before the clock counted them)."""
    from autonad_edge.search.planning import retrain_time_limit
    from autonad_edge.search.stages.context import RunClock

    costs = replace(COSTS, export_s=12.0)
    (tmp_path / "plan.json").write_text(json.dumps({"plan": {"budget_s": 3600.0}, "costs": asdict(costs),
                                                    "replanned": {"export_s": 12.0}}))
    (tmp_path / "retrain").mkdir()
    (tmp_path / "retrain" / "train_log.jsonl").write_text('{"epoch": 1, "time": 100.0}\n{"epoch": 2, "time": 150.0}\n')
    (tmp_path / "retrain" / "last.pt").write_bytes(b"")

    def limit(clock: RunClock) -> float:
        return retrain_time_limit(SimpleNamespace(out=tmp_path, given=frozenset(), clock=clock))

    # 2000 s of earlier stages, 300 s of them in the interrupted retraining (its 250 s of
    # epochs and the rest): counted once, by the clock.
    clock = RunClock(now=lambda: 0.0)
    clock.add_earlier(1700.0, stage="supernet")
    clock.add_earlier(300.0, stage="retrain")
    assert limit(clock) == pytest.approx(retrain_time_limit_s(costs, 3600, 2000, margin=REPLAN_MARGIN))
    # A directory whose stages.json kept no seconds for it: its logged epochs are spent.
    old = RunClock(now=lambda: 0.0)
    old.add_earlier(1700.0, stage="supernet")
    assert limit(old) == pytest.approx(retrain_time_limit_s(costs, 3600, 1950, margin=REPLAN_MARGIN))


def test_retraining_gets_the_time_the_earlier_stages_left():
    re_epoch = 35 * 0.3  # 10.5 s
    # 3600 s budget, 2000 s spent: 3600 - 2000 - 30 (export) - 252 (7 % margin) - 40 (4 val
    # passes after the last epoch) - 110 (11 val passes between epochs) = 1168 s left.
    assert retrain_epochs_left(COSTS, 3600, 2000) == int(1168 // re_epoch) == 111
    assert retrain_epochs_left(COSTS, 3600, 3590) == 2  # over budget already: the minimum
    assert retrain_epochs_left(COSTS, 3600, 2000, min_epochs=200) == 200
    # At the re-plan the export is measured (12 s here) and 4 % is held back: 3600 - 2000 - 12
    # - 144 - 40 - 110 = 1294 s.
    assert retrain_epochs_left(replace(COSTS, export_s=12.0), 3600, 2000, margin=REPLAN_MARGIN) == 1294 // re_epoch
    # The epochs' time limit is the time they were planned in, their val passes included
    # (which the trainer's measured pace includes): 1294 + 110 = 1404 s, re-read from the run's
    # clock when the retraining starts or resumes. At the planned pace the plan fits it.
    limit = retrain_time_limit_s(replace(COSTS, export_s=12.0), 3600, 2000, margin=REPLAN_MARGIN)
    assert limit == pytest.approx(1404)
    planned = retrain_epochs_left(replace(COSTS, export_s=12.0), 3600, 2000, margin=REPLAN_MARGIN)
    assert planned * re_epoch + 11 * 10.0 <= limit
    assert retrain_time_limit_s(COSTS, 3600, 3500) < 0  # already late: the trainer cuts at its first chance


def test_the_export_allowance_is_one_real_export_per_flavour_plus_the_final_measurement():
    from autonad_edge.search.budget import FULL_MEASUREMENT_S, measure_export_s

    space = SearchSpace.tiny()
    assert measure_export_s(space.smallest(), space, 3, (32, 48), flavors=0) == FULL_MEASUREMENT_S
    assert measure_export_s(space.smallest(), space, 3, (32, 48)) > FULL_MEASUREMENT_S


def test_the_planner_times_the_step_the_trainer_takes():
    """Its probe cuts fresh crops every step, in the trainer's layout (cutting them is part of a
    small network's step), and really trains the network it times (with the weight average on)."""
    from autonad_edge.models.network import SegmentationNet
    from autonad_edge.search.budget import _probe_batches, measure_train_step
    from autonad_edge.training.config import RetrainConfig

    data = _tiny_data()
    cfg = RetrainConfig(image_size=32, batch_size=2, ema_decay=0.99, device="cpu")
    next_batch, _, per_epoch = _probe_batches(cfg, data, seed=0)
    first, second = next_batch(), next_batch()
    assert per_epoch == len(data.train) and first[0].shape == (2, 3, 32, 32) and first[1].shape == (2, 32, 32)
    assert first[0].is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(first[0], second[0])  # a new batch, not the first one again
    net = SegmentationNet.from_arch(SearchSpace.named("tiny").smallest(), SearchSpace.named("tiny"), data.num_classes)
    before = [p.detach().clone() for p in net.parameters()]
    assert measure_train_step(net, cfg, data, steps=2) > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))  # it really trained


def test_the_val_probe_spans_the_image_sizes_and_scales_by_their_tiles():
    from autonad_edge.data.cache import build_cache, label_histogram
    from autonad_edge.data.dataset import SegmentationDataset

    # Four small images first, then four large ones: the first four alone would price a val
    # pass at a fraction of its cost.
    sides = [16] * 4 + [96] * 4
    samples = [(np.zeros((s, s, 1), np.uint8), np.zeros((s, s), np.uint8), (s, s),
                label_histogram(np.zeros((s, s), np.uint8))) for s in sides]
    cache = build_cache([f"im{i}" for i in range(8)], samples, ["background", "scratch"], None, [None] * 8)
    val = SegmentationDataset(cache, range(8), "val")
    picks, scale = val_probe(val, tile=32)
    assert [sides[i] for i in picks] == [16, 16, 96, 96]
    # A 16-px image is one 16x16 window; a 96-px one 4x4 windows of 32 (stride 24): 16,384 px.
    assert scale == pytest.approx((4 * 256 + 4 * 16 * 32 * 32) / (2 * 256 + 2 * 16 * 32 * 32))
    same = SegmentationDataset(build_cache([f"im{i}" for i in range(6)], samples[:1] * 6, ["background", "scratch"],
                                           None, [None] * 6), range(6), "val")
    picks, scale = val_probe(same, tile=32)
    assert len(picks) == 4 and scale == pytest.approx(6 / 4) and val_probe(same, 32, count=10)[1] == pytest.approx(1)


def test_old_plans_load_without_the_fields_they_lost():
    saved = {**COSTS.__dict__, "retrain_evals_per_epoch": 1.0}  # a session-5 plan.json
    assert StageCosts.from_dict(saved) == COSTS


def test_a_retrain_evaluates_about_ten_times():
    from autonad_edge.search.config import PipelineConfig

    for epochs, every in ((136, 13), (33, 3), (5, 1)):
        cfg = PipelineConfig(retrain_epochs=epochs).resolved()
        assert cfg.retrain_config("s.pt").eval_every == every


def test_epochs_scale_with_the_data_set_size():
    assert scale_epochs(40, 168, 168) == 40
    assert scale_epochs(40, 274, 168) == round(40 * 168 / 274)
    assert scale_epochs(40, 10, 168) == 160  # capped at 4x
    assert scale_epochs(40, 100_000, 168) == 20  # floored at 0.5x


def test_the_plan_times_its_steps_on_the_device_the_trainers_use(monkeypatch):
    """The probes ran on the CPU whatever the run trained on: on a GPU host a time budget was
    planned from CPU steps. Each training probe now resolves the trainer's `device` (answered
    here with "cpu:0") and moves its network there; the search's val score stays on the CPU,
    where the search runs it."""
    import autonad_edge.search.budget as budget
    from autonad_edge.search.budget import measure_costs
    from autonad_edge.training.config import RetrainConfig

    asked, moved = [], []
    trainer_device = torch.device("cpu", 0)  # the CPU, told apart from the search's plain "cpu"
    monkeypatch.setattr(budget, "resolve_device", lambda spec: (asked.append(spec), trainer_device)[1])
    real_layout = budget.to_training_layout
    monkeypatch.setattr(budget, "to_training_layout",
                        lambda net, device, channels_last: (moved.append(device), real_layout(net, device, channels_last))[1])
    scored = []  # the search's val score runs on the CPU (RunContext.supernet), the trainer's on its device
    real_calibrate, real_evaluate = budget.calibrate, budget.evaluate
    monkeypatch.setattr(budget, "calibrate", lambda *a, **kw: (scored.append(("search", kw["device"])),
                                                                real_calibrate(*a, **kw))[1])
    monkeypatch.setattr(budget, "evaluate", lambda *a, **kw: (scored.append(("supernet", kw["device"])),
                                                              real_evaluate(*a, **kw))[1])
    data = load_dataset(None, fmt="synthetic", image_size=32, synthetic_count=8, seed=0)
    supernet = SupernetConfig(space="tiny", image_size=32, batch_size=2, device="cpu:probe-supernet")
    retrain = RetrainConfig(image_size=32, batch_size=2, device="cpu:probe-retrain")
    measure_costs(supernet, retrain, SearchSpace.named("tiny"), data, units_to_time=0, subnets_to_time=0,
                  unit_timing_s=0.0, steps=1)
    assert asked == ["cpu:probe-supernet", "cpu:probe-retrain"]
    assert moved == [trainer_device, trainer_device]
    assert {where for where, _ in scored} == {"search", "supernet"}
    assert all(device == (torch.device("cpu") if where == "search" else trainer_device) for where, device in scored)


def test_a_rerun_keeps_its_plan_but_options_given_now_win(tmp_path):
    """A rerun read the plan back over the options given on its command line: `--generations 8`
    to extend a finished search was recorded in config.json and the report while 5 ran."""
    from autonad_edge.search.planning import plan_run

    (tmp_path / "plan.json").write_text(json.dumps({"epochs": {"generations": 5, "retrain_epochs": 70},
                                                     "plan_s": 3.0}))
    @dataclass(frozen=True)
    class Cfg:
        generations: int
        retrain_epochs: int

    earlier = []
    ctx = SimpleNamespace(cfg=Cfg(8, 30), out=tmp_path, given=frozenset({"generations"}),
                          clock=SimpleNamespace(add_earlier=earlier.append))
    planned = plan_run(ctx)
    assert (planned.generations, planned.retrain_epochs) == (8, 70) and earlier == [3.0]
