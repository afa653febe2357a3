"""Cluster groups: which clusters a paste into a cluster may land in and still count as an arrival."""

import numpy as np
import pytest

from sslguard.detectors.corpus import cluster_groups, group_extra


def test_group_extra_is_zero_up_to_group_k_and_grows_with_k():
    assert group_extra(15, 20) == 0 and group_extra(20, 20) == 0 and group_extra(500, None) == 0
    assert [group_extra(k, 20) for k in (21, 40, 41, 100, 1000)] == [1, 1, 2, 4, 49]


def test_cluster_groups_join_twins_and_nearest_centroids():
    ang = np.deg2rad([0, 5, 12, 90, 95, 180])
    cents = np.stack([np.cos(ang), np.sin(ang)], 1)
    g = cluster_groups(cents, twins=True, extra=0)
    # 0<->1 and 3<->4 are mutual nearest; 2's nearest (1) pairs with 0; 5's nearest (4) pairs with 3
    assert [np.flatnonzero(r).tolist() for r in g] == [[0, 1], [0, 1], [2], [3, 4], [3, 4], [5]]
    g2 = cluster_groups(cents, twins=True, extra=2)
    assert np.flatnonzero(g2[0]).tolist() == [0, 1, 2] and np.flatnonzero(g2[5]).tolist() == [3, 4, 5]
    assert g2.diagonal().all() and not cluster_groups(cents, twins=False, extra=0)[~np.eye(6, dtype=bool)].any()
    # never more than every cluster
    assert cluster_groups(cents, extra=50).all()


@pytest.mark.parametrize("k", [1, 2])
def test_cluster_groups_small_k(k):
    g = cluster_groups(np.eye(2)[:k], twins=True, extra=3)
    assert g.shape == (k, k) and g.diagonal().all()
