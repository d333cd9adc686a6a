"""`DifferentiableEMQuantifier`: transcript abundances by EM over equivalence classes.

The model of kallisto (Bray et al., Nat. Biotechnol. 2016) and salmon (Patro et al., Nat.
Methods 2017), in the notation of Pachter (arXiv:1104.3889, 2011). A read from class ``c``
comes from transcript ``t in c`` with probability proportional to ``n_t / l_t``, where
``n_t`` is the transcript's expected read count and ``l_t`` its effective length. Given
class read counts ``N_c``, one EM update is

    n_t <- sum over classes c containing t of  N_c * (n_t / l_t) / sum_{u in c} (n_u / l_u).

The outputs are the estimated counts ``n``, the read fractions ``alpha = n / sum(n)`` and
``TPM = 1e6 * (n / l) / sum(n / l)``. Length enters the E-step weights and the TPM
conversion once each, so reads that map to one transcript give ``TPM`` proportional to
``N / l``: the truth, with no second division by length.

Two paths:

* ``model(classes)``: a fixed number (``n_updates``) of updates, differentiable in the class
  counts and the effective lengths by the implicit function theorem at the fixed point: the
  result ``n*`` solves ``n* = F(n*; N, l)`` for the update ``F``, so ``dn* = (I - dF/dn)^-1
  (dF/dN dN + dF/dl dl)``; the backward pass solves the transposed system by GMRES (Saad &
  Schultz, SIAM J. Sci. Stat. Comput. 1986) on vector-Jacobian products of one update. The
  updates themselves are not differentiated, so memory does not grow with ``n_updates``, and
  the gradient is that of the fixed point, not of the truncated iteration. This is a
  reverse-mode rule (`jax.custom_vjp`), not `zoo.common.implicit`'s forward rule: JAX cannot
  transpose an iterative solve whose operator depends on the primal values. It is exact only
  where the EM has converged: the result reports ``relative_change``, the largest relative
  change of a transcript with more than 0.01 reads in the last update (kallisto's
  convergence measure); if it is not small, raise ``n_updates``. Transcripts that no read
  tells apart (same classes, same length) have no defined derivative: ``I - dF/dn`` is
  singular there.
  The E-step may be tempered: each class shares its reads in proportion to ``(n_t / l_t) **
  (1 / temperature)``, as in deterministic-annealing EM (Ueda & Nakano, Neural Netw. 1998);
  temperature 1 is plain EM; the fixed point is then that of the tempered update.
* ``model.quantify(classes)``: plain EM run to kallisto 0.48's convergence rule inside
  `jax.lax.while_loop` (not reverse-differentiable): start from equal counts; stop once at
  least ``min_iterations`` updates are done and no transcript with more than 0.01 reads
  changed by more than ``tolerance`` (relative) in the last update; then set counts below
  1e-8 to zero and make one last update, so their reads go to the other transcripts.

Both paths run on the two views of `EquivalenceClasses` (by class and by transcript), so an
update is two rounds of gathers and dense sums and never a scatter (see `_Problem.update`).

The module's one array is ``effective_lengths``: with the transcript set it is what makes a
quantifier specific to a transcriptome and a library (fragment-length distribution), it is
saved in checkpoints, and gradients reach it. `zoo.em.effective_lengths` computes it from the
transcript lengths and a fragment-length distribution as kallisto does.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from zoo.common.config import Config, require, require_positive
from zoo.em.equivalence_classes import EquivalenceClasses

# kallisto 0.48's convergence constants (src/EMAlgorithm.h): transcripts with fewer reads
# than _CHANGE_FLOOR are ignored by the convergence test; counts below _ZERO_BELOW are set to
# zero before the last update.
_CHANGE_FLOOR = 1e-2
_ZERO_BELOW = 1e-8
# GMRES for the fixed point's gradient: Krylov basis size, and restarts at most.
_GMRES_RESTART = 30
_GMRES_RESTARTS = 20


@dataclasses.dataclass(frozen=True)
class DifferentiableEMQuantifierConfig(Config):
    """Settings of a `DifferentiableEMQuantifier`.

    Attributes:
        n_transcripts: number of transcripts.
        n_updates: EM updates made by the differentiable path (``__call__``).
        temperature: E-step temperature of the differentiable path (1 is plain EM; below 1
            sharpens the sharing of multi-mapping reads, above 1 flattens it).
        tolerance: relative change under which ``quantify`` considers a transcript settled
            (kallisto: 0.01).
        min_iterations: fewest updates ``quantify`` makes before testing convergence
            (kallisto 0.48 tests from its 52nd update on).
        max_iterations: most updates ``quantify`` makes (kallisto: 10,000).
    """

    n_transcripts: int = 16
    n_updates: int = 100
    temperature: float = 1.0
    tolerance: float = 0.01
    min_iterations: int = 52
    max_iterations: int = 10_000

    def validate(self) -> None:
        require_positive(
            n_transcripts=self.n_transcripts,
            n_updates=self.n_updates,
            temperature=self.temperature,
            tolerance=self.tolerance,
            max_iterations=self.max_iterations,
        )
        require(
            0 <= self.min_iterations <= self.max_iterations,
            f"min_iterations must be in [0, max_iterations={self.max_iterations}], "
            f"got {self.min_iterations}",
        )


class Abundances(NamedTuple):
    """Transcript abundances estimated from one sample.

    Attributes:
        est_counts: expected number of reads from each transcript.
        read_fractions: ``alpha``, the fraction of reads from each transcript.
        tpm: transcripts per million, ``1e6 * (n / l) / sum(n / l)``.
        iterations: EM updates made.
        relative_change: the largest relative change ``|n_new - n_old| / n_new`` in the last
            update among transcripts with more than 0.01 reads (0 if there are none).
    """

    est_counts: Float[Array, " n_transcripts"]
    read_fractions: Float[Array, " n_transcripts"]
    tpm: Float[Array, " n_transcripts"]
    iterations: Int[Array, ""]
    relative_change: Float[Array, ""]


class DifferentiableEMQuantifier(eqx.Module):
    """EM quantification of transcripts from equivalence-class counts (see module doc)."""

    effective_lengths: Float[Array, " n_transcripts"]
    config: DifferentiableEMQuantifierConfig = eqx.field(static=True)

    def __init__(
        self, config: DifferentiableEMQuantifierConfig, *, key: PRNGKeyArray | None = None
    ):
        """A quantifier whose effective lengths are all 1 (set them with
        `with_effective_lengths`). `key` is unused: nothing is random; it is accepted so that
        every architecture is built the same way."""
        del key
        self.effective_lengths = jnp.ones(config.n_transcripts)
        self.config = config

    def with_effective_lengths(self, lengths: np.ndarray | Array) -> DifferentiableEMQuantifier:
        """A copy using `lengths` (one positive, finite value per transcript) as the
        effective lengths: from `zoo.em.effective_lengths.effective_lengths`, or kallisto's
        ``eff_length`` column.

        Raises:
            ValueError: for a wrong shape, NaN or infinite values, or a length <= 0.
        """
        lengths = np.asarray(lengths, dtype=np.float64)
        expected = (self.config.n_transcripts,)
        if lengths.shape != expected:
            raise ValueError(f"effective lengths have shape {lengths.shape}, expected {expected}")
        if not np.all(np.isfinite(lengths)):
            raise ValueError("effective lengths contain NaN or infinite values")
        if np.any(lengths <= 0):
            first = int(np.argmax(lengths <= 0))
            raise ValueError(
                f"effective lengths must be positive; transcript {first} has {lengths[first]:g}"
            )
        return eqx.tree_at(lambda m: m.effective_lengths, self, jnp.asarray(lengths, jnp.float32))

    def __call__(self, classes: EquivalenceClasses) -> Abundances:
        """``n_updates`` tempered EM updates from equal counts: the differentiable path,
        whose gradients are those of the fixed point (implicit function theorem; see module
        doc), right only where ``relative_change`` of the result is small.

        Args:
            classes: one sample's equivalence classes over this quantifier's transcripts.

        Returns:
            The `Abundances` after the updates (``iterations`` is ``n_updates``).
        """
        self._check(classes)
        temperature = self.config.temperature
        problem = _Problem.of(classes, self.effective_lengths)
        fixed = jax.lax.stop_gradient(problem)

        def update(counts, _):
            return fixed.update(counts, temperature), None

        start = fixed.equal_counts()
        counts, _ = jax.lax.scan(update, start, None, self.config.n_updates - 1)
        last = fixed.update(counts, temperature)
        change = _relative_change(counts, last)
        leaves, structure = jax.tree.flatten(problem)
        last = _at_fixed_point(structure, temperature, last, *leaves)
        return _abundances(
            problem.in_transcript_order(last),
            self.effective_lengths,
            jnp.asarray(self.config.n_updates),
            change,
        )

    def quantify(self, classes: EquivalenceClasses) -> Abundances:
        """Plain EM to convergence with kallisto 0.48's rule (see module doc), compiled.
        Forward-mode only: for gradients use ``__call__``.

        Args:
            classes: one sample's equivalence classes over this quantifier's transcripts.

        Returns:
            The converged `Abundances` and the number of updates made.
        """
        self._check(classes)
        return _run_to_convergence(self, classes)

    def _check(self, classes: EquivalenceClasses) -> None:
        if classes.n_transcripts != self.config.n_transcripts:
            raise ValueError(
                f"the equivalence classes index {classes.n_transcripts} transcripts, but this "
                f"quantifier has {self.config.n_transcripts}"
            )


@eqx.filter_jit
def _run_to_convergence(
    model: DifferentiableEMQuantifier, classes: EquivalenceClasses
) -> Abundances:
    config = model.config
    problem = _Problem.of(classes, model.effective_lengths)

    def running(state):
        iteration, _, _, _, done = state
        return ~done & (iteration < config.max_iterations)

    def step(state):
        # After convergence, one last update from the counts with tiny values zeroed.
        iteration, counts, _, converged, _ = state
        counts = jnp.where(converged & (counts < _ZERO_BELOW), 0.0, counts)
        new = problem.update(counts, 1.0)
        change = _relative_change(counts, new)
        settled = (change <= config.tolerance) & (iteration + 1 >= config.min_iterations)
        return iteration + 1, new, change, settled | converged, converged

    counts = problem.equal_counts()
    no = jnp.asarray(False)
    start = (jnp.asarray(0), counts, jnp.asarray(jnp.inf, counts.dtype), no, no)
    iterations, counts, change, _, _ = jax.lax.while_loop(running, step, start)
    return _abundances(
        problem.in_transcript_order(counts), model.effective_lengths, iterations, change
    )


def _relative_change(
    old: Float[Array, " n_padded"], new: Float[Array, " n_padded"]
) -> Float[Array, ""]:
    """kallisto's convergence measure: the largest ``|new - old| / new`` over transcripts
    with more than 0.01 reads in `new` (0 if none)."""
    counted = new > _CHANGE_FLOOR
    ratios = jnp.abs(new - old) / jnp.where(counted, new, 1.0)
    return jnp.max(jnp.where(counted, ratios, 0.0))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _at_fixed_point(structure, temperature: float, solution: Array, *leaves: Array) -> Array:
    """`solution`, differentiated as the fixed point ``n* = F(n*; problem)`` of the EM update
    for the problem flattened into `leaves` (module doc). Only the problem's float leaves
    (lengths, unique and shared counts) receive gradients; `solution` receives none: a fixed
    point does not depend on where the iteration started."""
    del structure, temperature, leaves
    return solution


def _at_fixed_point_forward(structure, temperature, solution, *leaves):
    return solution, (solution, leaves)


def _at_fixed_point_backward(structure, temperature, residuals, cotangent):
    """``u = (I - dF/dn)^-T g`` by GMRES on vector-Jacobian products, then ``u . dF/dproblem``."""
    solution, leaves = residuals
    problem = jax.tree.unflatten(structure, leaves)
    _, pull_counts = jax.vjp(lambda counts: problem.update(counts, temperature), solution)

    def minus_jacobian_transposed(vector):
        (moved,) = pull_counts(vector)
        return vector - moved

    tolerance = float(jnp.finfo(solution.dtype).eps) ** 0.75
    adjoint, _ = jax.scipy.sparse.linalg.gmres(
        minus_jacobian_transposed,
        cotangent,
        tol=tolerance,
        restart=min(_GMRES_RESTART, solution.shape[0]),
        maxiter=_GMRES_RESTARTS,
    )

    def update_with(lengths, unique, shared_counts):
        varied = problem._replace(lengths=lengths, unique=unique, shared_counts=shared_counts)
        return varied.update(solution, temperature)

    _, pull_problem = jax.vjp(update_with, problem.lengths, problem.unique, problem.shared_counts)
    lengths, unique, shared_counts = pull_problem(adjoint)
    varying = {"lengths": lengths, "unique": unique, "shared_counts": shared_counts}
    gradients = [varying.get(field) for field in problem._fields]
    # Leaves of the fields in order; the int fields (and tuples of them) get no gradient.
    flat = [
        leaf
        for field, value, gradient in zip(problem._fields, problem, gradients, strict=True)
        for leaf in ([gradient] if field in varying else [None] * len(jax.tree.leaves(value)))
    ]
    return (None, *flat)


_at_fixed_point.defvjp(_at_fixed_point_forward, _at_fixed_point_backward)


class _Problem(NamedTuple):
    """One sample's EM inputs, with transcripts at their positions (see
    `zoo.em.equivalence_classes`) followed by the padding transcript (length 1, no reads), and
    the shared classes followed by a padding class (no reads), so that padded ids gather
    neutral values. The EM runs on counts in position order; `in_transcript_order` maps
    them back."""

    positions: Int[Array, " n_transcripts"]
    lengths: Float[Array, " n_padded"]
    unique: Float[Array, " n_padded"]
    shared_counts: Float[Array, " n_shared_padded"]
    members: tuple[Int[Array, "_width _n"], ...]
    memberships: tuple[Int[Array, "_width _n"], ...]

    @classmethod
    def of(cls, classes: EquivalenceClasses, lengths: Float[Array, " n_transcripts"]) -> _Problem:
        """The inputs for `classes` and the effective `lengths` (in transcript-id order)."""
        n = classes.n_transcripts
        positions = classes.transcript_positions
        unique = jnp.zeros(n + 1, classes.counts.dtype)
        shared_counts = []
        members = []
        for bucket in classes.buckets:
            counts = classes.counts[bucket.classes]
            if bucket.transcripts.shape[0] == 1:
                unique = unique.at[bucket.transcripts[0]].add(counts)
            else:
                shared_counts.append(counts)
                members.append(bucket.transcripts)
        shared_counts.append(jnp.zeros(1, classes.counts.dtype))
        return cls(
            positions,
            jnp.ones(n + 1, lengths.dtype).at[positions].set(lengths),
            unique,
            jnp.concatenate(shared_counts),
            tuple(members),
            classes.memberships,
        )

    def update(
        self, counts: Float[Array, " n_padded"], temperature: float
    ) -> Float[Array, " n_padded"]:
        """One (tempered) EM update of the expected counts (see module doc).

        Plain EM factors the update as ``n_t <- unique_t + w_t * sum_{c ∋ t} N_c / W_c``
        with ``w = n / l`` and ``W_c = sum_{u in c} w_u``: one gather-sum over each class's
        transcripts, one over each transcript's classes. A class whose ``W_c`` is under 1e-30
        (all zero: kallisto skips such classes too) shares nothing. The tempered update
        works in logs, ``n_t <- unique_t + sum_c N_c exp(s_t - logsumexp_{u in c} s_u)``
        with ``s = log(w) / temperature``, so that no power of ``w`` overflows.
        """
        weights = counts / self.lengths
        if temperature == 1.0:
            totals = self._over_members(lambda _, ids: _take(weights, ids), jnp.add, 0.0)
            ratios = jnp.where(totals > 1e-30, self.shared_counts, 0.0) / jnp.maximum(totals, 1e-30)
            return self.unique + weights * self._over_memberships(lambda _, ids: _take(ratios, ids))
        alive = weights > 0
        logits = jnp.where(alive, jnp.log(jnp.where(alive, weights, 1.0)) / temperature, -jnp.inf)
        peaks = self._over_members(lambda _, ids: _take(logits, ids), jnp.maximum, -jnp.inf)
        live = peaks > -jnp.inf
        peaks = jnp.where(live, peaks, 0.0)
        sums = self._over_members(
            lambda columns, ids: jnp.exp(_take(logits, ids) - peaks[columns]), jnp.add, 0.0
        )
        log_totals = jnp.where(live, peaks + jnp.log(jnp.where(live, sums, 1.0)), jnp.inf)
        return self.unique + self._over_memberships(
            lambda rows, ids: (
                _take(self.shared_counts, ids) * jnp.exp(logits[rows] - _take(log_totals, ids))
            )
        )

    def _over_members(self, term, combine, pad: float) -> Float[Array, " n_shared_padded"]:
        """For each shared class (one column of a bucket), ``term(columns, ids)`` for each
        row of transcript ids, combined over the rows; then `pad` for the padding slot.
        Terms of the padding transcript must be neutral for `combine`.

        Gathering row by row lets XLA fuse the gathers and the combination into one loop."""
        out = []
        start = 0
        for ids in self.members:
            columns = slice(start, start + ids.shape[1])
            start = columns.stop
            out.append(functools.reduce(combine, [term(columns, row) for row in ids]))
        return jnp.concatenate([*out, jnp.full(1, pad, self.unique.dtype)])

    def _over_memberships(self, term) -> Float[Array, " n_padded"]:
        """For each transcript position, ``term(positions, ids)`` summed over the rows of
        shared-class ids listing its classes (zero for transcripts in no shared class and for
        the padding transcript). Terms of the padding class must be zero."""
        n = self.positions.shape[0]
        start = n - sum(ids.shape[1] for ids in self.memberships)
        out = [jnp.zeros(start, self.unique.dtype)]
        for ids in self.memberships:
            rows = slice(start, start + ids.shape[1])
            start = rows.stop
            out.append(functools.reduce(jnp.add, [term(rows, row) for row in ids]))
        return jnp.concatenate([*out, jnp.zeros(1, self.unique.dtype)])

    def equal_counts(self) -> Float[Array, " n_padded"]:
        """The EM's start: every transcript ``1 / n_transcripts`` reads, the padding none."""
        n = self.positions.shape[0]
        return jnp.full(n + 1, 1.0 / n, self.unique.dtype).at[n].set(0.0)

    def in_transcript_order(self, counts: Float[Array, " n_padded"]) -> Float[Array, " n"]:
        """Per-position values back in transcript-id order, without the padding."""
        return counts[self.positions]


def _take(values: Array, ids: Array) -> Array:
    """``values[ids]`` for ids known to be in range (built so by `EquivalenceClasses`)."""
    return values.at[ids].get(mode="promise_in_bounds", wrap_negative_indices=False)


def _abundances(
    counts: Float[Array, " n_transcripts"],
    lengths: Float[Array, " n_transcripts"],
    iterations: Int[Array, ""],
    relative_change: Float[Array, ""],
) -> Abundances:
    per_base = counts / lengths
    return Abundances(
        est_counts=counts,
        read_fractions=counts / counts.sum(),
        tpm=1e6 * per_base / per_base.sum(),
        iterations=iterations.astype(jnp.int32),
        relative_change=relative_change,
    )
