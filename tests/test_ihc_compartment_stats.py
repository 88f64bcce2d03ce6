"""Per-cell compartment statistics: exact mean and percentiles per label, and why the panel uses p75."""

from __future__ import annotations

import numpy as np
import pytest

from histo.errors import HistoError
from histo.ihc.compartment_stats import STATISTICS, label_statistic


def test_mean_and_percentiles_match_numpy_per_label():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=(40, 50)).astype(np.int32)
    labels[labels == 4] = 0  # label 4 has no pixels
    values = rng.random((40, 50)).astype(np.float32)
    for stat in STATISTICS:
        got, cnt = label_statistic(values, labels, 5, stat)
        for k in range(1, 6):
            v = values[labels == k]
            assert cnt[k - 1] == v.size
            if v.size == 0:
                assert np.isnan(got[k - 1])
            elif stat == "mean":
                assert got[k - 1] == pytest.approx(v.astype(np.float64).mean())
            else:
                assert got[k - 1] == np.percentile(v, int(stat[1:]), method="lower")


def test_p75_reads_the_stained_part_of_a_ring_with_gaps():
    # A cell ring whose stained cytoplasm (OD 0.8) covers 70 % of its pixels, the rest a gap (OD 0.02):
    # the mean reads it as 2+ (0.57), the 75th percentile as what is stained.
    values = np.full((10, 10), 0.8, np.float32)
    values.ravel()[:30] = 0.02
    labels = np.ones((10, 10), np.int32)
    mean, _ = label_statistic(values, labels, 1, "mean")
    p75, _ = label_statistic(values, labels, 1, "p75")
    assert mean[0] == pytest.approx(0.566, abs=1e-3)
    assert p75[0] == pytest.approx(0.8)


def test_unknown_statistic_is_an_error():
    with pytest.raises(HistoError, match="'p99' is not one of mean, p50, p75, p90"):
        label_statistic(np.zeros((2, 2)), np.ones((2, 2), np.int32), 1, "p99")
