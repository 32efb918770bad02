import jax.numpy as jnp
import numpy as np
import pytest

from hybridflow_jax import schedules
from hybridflow_jax.models import masking


@pytest.mark.parametrize("name,block,frac", [("1_2", 2, 1 / 2), ("1_4", 2, 1 / 4),
                                              ("1_9", 3, 1 / 9), ("1_16", 4, 1 / 16)])
@pytest.mark.parametrize("multiple", [(1, 1), (3, 2), (4, 6)])
def test_schedules_keep_exactly_their_fraction(name, block, frac, multiple):
  h, w = block * multiple[0] * 2, block * multiple[1] * 2
  keep = schedules.fixed_keep_map(name, h, w)
  assert keep.shape == (h, w) and keep.dtype == bool
  assert keep.sum() == round(frac * h * w)
  # One kept index in every block (the structured layout, not just the right count).
  if name != "1_2":
    blocks = keep.reshape(h // block, block, w // block, block).sum(axis=(1, 3))
    assert (blocks == 1).all()


def test_keep_map_works_for_any_grid_size():
  keep = schedules.fixed_keep_map("1_9", 5, 7)
  assert keep.shape == (5, 7) and keep[0, 0] and keep.sum() == 2 * 3


def test_unknown_schedule_is_one_clear_error():
  with pytest.raises(ValueError, match="unknown mask schedule '1_3'"):
    schedules.fixed_keep_map("1_3", 4, 4)


def _half_detailed_image(size=128, detailed="right"):
  """Flat grey on one half, high-contrast random texture on the other."""
  rng = np.random.default_rng(0)
  img = np.full((size, size, 3), 0.5, np.float32)
  texture = rng.uniform(0, 1, (size, size // 2, 1)).repeat(3, axis=2)
  if detailed == "right":
    img[:, size // 2:] = texture
  else:
    img[:, :size // 2] = texture
  return jnp.asarray(img)


@pytest.mark.parametrize("score", ["gradient", "variance"])
@pytest.mark.parametrize("detailed", ["left", "right"])
def test_dynamic_masking_gives_detail_the_denser_schedule(score, detailed):
  # 128 px at stride 16 is an 8x8 token grid: with 4x4-token regions, 2x2 regions.
  img = _half_detailed_image(detailed=detailed)
  target = (1 / 4 + 1 / 16) / 2
  names = ("1_2", "1_4", "1_9", "1_16")
  keep, choice = masking.dynamic_mask(img, stride=16, region=4, target_keep=target, names=names,
                                      score=score)
  choice = np.asarray(choice)
  flat, rich = (choice[:, 0], choice[:, 1]) if detailed == "right" else (choice[:, 1], choice[:, 0])
  # A lower choice is a denser candidate.
  assert (rich < flat).all(), choice
  assert float(np.mean(keep)) <= target + 1e-9
  # The budget is used, not wasted: the flat half is not left denser than needed.
  assert float(np.mean(keep)) > 1 / 16
  # The receiver rebuilds the same keep-map from the choices alone, with NumPy.
  np.testing.assert_array_equal(keep, schedules.region_keep_map(choice, names, 4, (8, 8)))


@pytest.mark.parametrize("target", [0.07, 0.12, 0.2, 0.3, 0.5])
def test_dynamic_masking_meets_its_budget_on_a_photo(target):
  from skimage import data
  img = jnp.asarray(data.astronaut()[:256, :256].astype(np.float32) / 255.0)
  keep, choice = masking.dynamic_mask(img, stride=16, region=4, target_keep=target)
  assert float(np.mean(keep)) <= target
  assert choice.shape == (4, 4)


def test_wire_ids_name_every_schedule_once():
  ids = [schedules.wire_id(n) for n in schedules.ALL]
  assert len(set(ids)) == len(ids) and [schedules.from_wire(i) for i in ids] == list(schedules.ALL)
  with pytest.raises(ValueError, match="unsupported schedule id 9"):
    schedules.from_wire(9)


def test_region_keep_map_is_the_same_in_numpy_and_jax_on_ragged_grids():
  names = ("1_2", "1_4", "1_9", "1_16")
  choice = np.random.default_rng(0).integers(0, len(names), schedules.region_grid((7, 10), 3))
  host = schedules.region_keep_map(choice, names, 3, (7, 10))
  device = schedules.region_keep_map(jnp.asarray(choice), names, 3, (7, 10), xp=jnp)
  assert host.shape == (7, 10) and host.dtype == bool
  np.testing.assert_array_equal(host, np.asarray(device))
  # Each region carries exactly its candidate's pattern.
  full = schedules.fixed_keep_map(names[choice[0, 0]], 7, 10)
  np.testing.assert_array_equal(host[:3, :3], full[:3, :3])
  assert schedules.side_bits((7, 10), 3, names) == 3 * 4 * 2


def test_schedule_lists_parse_with_one_line_errors():
  assert schedules.parse_list("1_4, dynamic") == ("1_4", "dynamic")
  with pytest.raises(ValueError, match="unknown 1_5"):
    schedules.parse_list("1_4,1_5")
  with pytest.raises(ValueError, match="given twice"):
    schedules.parse_list("1_4,1_4")


def _rd_problem(seed=0, hw=(10, 14), region=4):
  """Random per-region errors that fall as schedules get denser, and the regions' token counts."""
  names = ("1_2", "1_4", "1_9", "1_16")
  kept = masking.region_keep_counts(hw, region, names)
  rng = np.random.default_rng(seed)
  # Error falls with kept tokens at a region-dependent rate: regions differ in what tokens buy.
  gain = rng.uniform(0.0, 1.0, kept.shape[1:])
  base = rng.uniform(5.0, 10.0, kept.shape[1:])
  distortion = base[None] - gain[None] * np.sqrt(kept)
  return names, kept, distortion, hw[0] * hw[1]


def test_region_keep_counts_add_up_to_each_schedules_keep_map():
  names, kept, _, _ = _rd_problem()
  for s, name in enumerate(names):
    assert kept[s].sum() == schedules.fixed_keep_map(name, 10, 14).sum()


@pytest.mark.parametrize("target", [0.0, 0.07, 0.1, 0.15, 0.25, 0.4, 0.6])
def test_rd_allocation_meets_its_budget_and_spends_it_where_tokens_buy_most(target):
  names, kept, distortion, tokens = _rd_problem()
  choice = masking.rd_allocation(distortion, kept, tokens, target)
  keep = schedules.region_keep_map(choice, names, 4, (10, 14))
  sparsest_keep = np.take_along_axis(kept, np.argmin(kept, 0)[None], 0)[0].sum() / tokens
  if target < sparsest_keep:
    # Nothing fits: every region at its sparsest candidate (what the score allocation does too).
    assert keep.sum() == np.min(kept, axis=0).sum()
    return
  assert keep.mean() <= target + 1e-12
  # A Lagrangian choice has the least error of all choices that keep no more tokens: in
  # particular less than any fixed schedule as sparse as it (and it is not far under budget).
  total = lambda c: np.take_along_axis(distortion, c[None], 0)[0].sum()  # noqa: E731
  for s in range(len(names)):
    uniform = np.full(choice.shape, s, np.int32)
    if np.take_along_axis(kept, uniform[None], 0)[0].sum() <= keep.sum():
      assert total(choice) <= total(uniform) + 1e-9, names[s]
  if target < 0.5:
    assert keep.mean() > target - 0.05


def test_rd_allocation_error_never_grows_with_the_budget():
  _, kept, distortion, tokens = _rd_problem(seed=3)
  errors = [np.take_along_axis(distortion, masking.rd_allocation(distortion, kept, tokens, t)[None],
                               0)[0].sum() for t in np.linspace(0.06, 0.5, 23)]
  assert all(a >= b - 1e-9 for a, b in zip(errors, errors[1:])), errors


def test_rd_allocation_gives_tokens_to_the_region_they_help():
  # Two regions, same token counts; only the second region's error falls with denser schedules.
  names = ("1_4", "1_16")
  kept = masking.region_keep_counts((4, 8), 4, names)
  distortion = np.array([[[5.0, 5.0]], [[5.0, 9.0]]])
  budget = (kept[0, 0, 1] + kept[1, 0, 0]) / 32          # room for one region at 1_4
  choice = masking.rd_allocation(distortion, kept, 32, budget)
  np.testing.assert_array_equal(choice, [[1, 0]])
