"""MKL PARDISO back end of `SparseCholesky`: against dense linear algebra and against SuperLU."""

import numpy as np
import pytest
import scipy.sparse as sp

from manifold_aps import pardiso
from manifold_aps.sparse_cholesky import NotPositiveDefiniteError, SparseCholesky

pytestmark = pytest.mark.skipif(not pardiso.available(), reason="MKL PARDISO is not installed")


def _spd(n: int = 150) -> sp.csr_matrix:
    a = sp.random(n, n, density=0.05, random_state=1)
    return (a @ a.T + 3.0 * sp.identity(n)).tocsr()


def test_pardiso_solve_logdet_and_draws_match_dense():
    a = _spd()
    dense = a.toarray()
    f = SparseCholesky(a, backend="pardiso")
    assert f.backend == "pardiso"
    b = np.random.default_rng(0).standard_normal((150, 3))
    np.testing.assert_allclose(f.solve(b), np.linalg.solve(dense, b), atol=1e-12)
    np.testing.assert_allclose(f.solve(b[:, 0]), np.linalg.solve(dense, b[:, 0]), atol=1e-12)
    assert f.logdet() == pytest.approx(np.linalg.slogdet(dense)[1], rel=1e-12)
    # draws x = R z with R R^T = A^{-1}: the square root is exact when z runs over the identity
    root = f.draw(np.eye(150))
    np.testing.assert_allclose(root @ root.T, np.linalg.inv(dense), atol=1e-12)
    # selected inversion falls back to SuperLU's L and gives the exact diagonal
    np.testing.assert_allclose(f.inverse_diagonal(), np.diag(np.linalg.inv(dense)), rtol=1e-10)
    assert f.selected_inversion_work() is None and f.nnz >= 150


def test_pardiso_agrees_with_superlu_and_refuses_indefinite():
    a = _spd(400)
    p, s = SparseCholesky(a, backend="pardiso"), SparseCholesky(a, backend="superlu")
    assert p.logdet() == pytest.approx(s.logdet(), rel=1e-12)
    b = np.ones(400)
    np.testing.assert_allclose(p.solve(b), s.solve(b), rtol=1e-10)
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
        SparseCholesky(sp.diags([1.0, -1.0, 2.0]), backend="pardiso")
    with pytest.raises(ValueError, match="backend must be"):
        SparseCholesky(a, backend="cholmod")


def test_a_pattern_factored_again_reuses_its_ordering_and_gives_the_same_numbers():
    a = _spd(300)
    first = SparseCholesky(a, backend="pardiso")  # computes METIS's ordering and keeps it
    again = SparseCholesky(2.5 * a, backend="pardiso")  # same pattern: the kept ordering
    assert np.array_equal(first._pardiso._perm, again._pardiso._perm)
    assert again.logdet() == pytest.approx(first.logdet() + 300 * np.log(2.5), rel=1e-12)
    b = np.random.default_rng(1).standard_normal(300)
    np.testing.assert_allclose(again.solve(b), np.linalg.solve(2.5 * a.toarray(), b), atol=1e-12)
