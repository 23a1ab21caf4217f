import torch

from nerf.sampling import hierarchical_samples, sample_pdf, stratified_samples


def test_stratified_deterministic_is_linspace():
    near, far = torch.full((3,), 2.0), torch.full((3,), 6.0)
    z = stratified_samples(near, far, 5, perturb=False)
    assert torch.allclose(z, torch.tensor([2.0, 3.0, 4.0, 5.0, 6.0]).expand(3, 5))


def test_stratified_lindisp_is_linear_in_disparity():
    z = stratified_samples(torch.tensor([1.0]), torch.tensor([4.0]), 4, perturb=False, lindisp=True)
    expected = 1.0 / torch.tensor([1.0, 0.75, 0.5, 0.25])  # 1/near (1 - t) + 1/far t
    assert torch.allclose(z[0], expected)


def test_stratified_perturbed_stays_in_its_stratum():
    near, far = torch.full((2000,), 2.0), torch.full((2000,), 6.0)
    z = stratified_samples(near, far, 9, perturb=True, generator=torch.Generator().manual_seed(0))
    grid = torch.linspace(2.0, 6.0, 9)
    mids = 0.5 * (grid[1:] + grid[:-1])
    lower = torch.cat([grid[:1], mids])
    upper = torch.cat([mids, grid[-1:]])
    assert ((z >= lower) & (z <= upper)).all()
    assert (z[:, 1:] >= z[:, :-1]).all()
    u = (z - lower) / (upper - lower)
    assert abs(u.mean().item() - 0.5) < 0.01  # u ~ U[0, 1)
    assert abs(u.var().item() - 1 / 12) < 0.005


def test_sample_pdf_uniform_weights_deterministic_is_linear():
    bins = torch.linspace(0.0, 1.0, 11)[None].repeat(2, 1)
    samples = sample_pdf(bins, torch.ones(2, 10), 21, deterministic=True)
    assert torch.allclose(samples, torch.linspace(0.0, 1.0, 21).expand(2, 21), atol=1e-6)


def test_sample_pdf_zero_weights_fall_back_to_uniform():
    bins = torch.linspace(2.0, 6.0, 9)[None]
    samples = sample_pdf(bins, torch.zeros(1, 8), 17, deterministic=True)
    assert torch.allclose(samples, torch.linspace(2.0, 6.0, 17)[None], atol=1e-5)


def test_sample_pdf_one_dominant_bin():
    bins = torch.linspace(0.0, 10.0, 11)[None]
    weights = torch.zeros(1, 10)
    weights[0, 3] = 1.0
    samples = sample_pdf(bins, weights, 10_000, deterministic=False, generator=torch.Generator().manual_seed(0))
    inside = ((samples >= 3.0) & (samples <= 4.0)).float().mean()
    assert inside > 0.998  # the other bins share ~9e-5 of the mass through the 1e-5 padding
    det = sample_pdf(bins, weights, 64, deterministic=True)
    assert ((det[0, 1:-1] >= 3.0) & (det[0, 1:-1] <= 4.0)).all()


def test_sample_pdf_matches_the_distribution_statistically():
    bins = torch.tensor([[0.0, 1.0, 3.0, 4.0, 8.0]])
    weights = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    samples = sample_pdf(bins, weights, 200_000, deterministic=False,
                         generator=torch.Generator().manual_seed(3))[0]
    counts = torch.histogram(samples, bins=bins[0]).hist / samples.numel()
    expected = (weights + 1e-5) / (weights + 1e-5).sum()
    assert torch.allclose(counts, expected[0], atol=0.004)
    # within a bin the density is uniform: the mean of bin 3 samples is its midpoint
    in_last = samples[samples >= 4.0]
    assert abs(in_last.mean().item() - 6.0) < 0.02
    assert samples.min() >= 0.0 and samples.max() <= 8.0


def test_hierarchical_samples_sorted_detached_and_complete():
    z = stratified_samples(torch.full((5,), 2.0), torch.full((5,), 6.0), 16, perturb=True)
    weights = torch.rand(5, 16, requires_grad=True)
    z_all, z_new = hierarchical_samples(z, weights, 32, deterministic=False)
    assert z_all.shape == (5, 48) and z_new.shape == (5, 32)
    assert not z_all.requires_grad
    assert (z_all[:, 1:] >= z_all[:, :-1]).all()
    assert (z_all >= 2.0).all() and (z_all <= 6.0).all()
    for r in range(5):  # every coarse sample is kept
        assert torch.isin(z[r], z_all[r]).all()
