"""`EquivalenceClasses`: read counts over equivalence classes of transcripts, stored sparsely.

An equivalence class is the set of transcripts a read is compatible with (kallisto's
pseudoalignment, salmon's selective alignment); reads with the same set are counted together.
Quantification only needs, per class, its read count and its transcript set.

The sets are stored twice, as padded index matrices grouped into buckets of similar width
(1 to 8, then 10, 12, 14, 16, 20, 24, ...: four per doubling, so padding stays under a quarter
of a list while few buckets keep compilation short), one view for each direction of an EM
update:

* by class: a bucket is a ``(width, n_classes_in_bucket)`` matrix, column ``i`` listing the
  transcripts of one class, padded with the id ``n_transcripts``;
* by transcript: for the classes with more than one transcript (the *shared* classes, which
  are numbered in bucket order), a matrix per bucket of transcripts whose column ``j`` lists
  the shared classes containing one transcript, padded with the id ``n_shared``.

Transcripts are referred to by their *position*: transcripts sorted by the width of their
by-transcript list (stably, so ties keep their ids' order). Each by-transcript bucket then
covers a contiguous run of positions, after the transcripts in no shared class. Memory grows
with the total class size (never with reads x transcripts), and both directions of an update
are gathers along rows followed by dense sums, with no scatter.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int


class ClassBucket(eqx.Module):
    """Classes whose transcript lists share one padded width.

    Attributes:
        classes: row index of each class in `EquivalenceClasses.counts`.
        transcripts: column ``i`` holds the positions of the transcripts of class
            ``classes[i]``, padded with ``n_transcripts``.
    """

    classes: Int[Array, " n"]
    transcripts: Int[Array, "width n"]


class EquivalenceClasses(eqx.Module):
    """Read counts over equivalence classes, with each class's transcripts (see module doc).

    Build with `EquivalenceClasses.from_lists`, which checks the input.

    Attributes:
        counts: reads in each class (float so gradients can flow to them).
        buckets: the classes' transcript lists, bucketed by width (widest last).
        transcript_positions: the position of each transcript (see module doc).
        memberships: the shared classes containing each transcript, one matrix per bucket of
            positions; shared classes are numbered in the order of the buckets of width > 1.
        n_transcripts: number of transcripts the ids refer to.
    """

    counts: Float[Array, " n_classes"]
    buckets: tuple[ClassBucket, ...]
    transcript_positions: Int[Array, " n_transcripts"]
    memberships: tuple[Int[Array, "_width _n"], ...]
    n_transcripts: int = eqx.field(static=True)

    @classmethod
    def from_lists(
        cls,
        transcripts: Sequence[Sequence[int]],
        counts: Sequence[float] | np.ndarray,
        n_transcripts: int,
    ) -> EquivalenceClasses:
        """Classes from one transcript-id list and one read count per class.

        Args:
            transcripts: for each class, the ids (in ``[0, n_transcripts)``) of its transcripts.
            counts: the number of reads in each class: non-negative whole numbers.
            n_transcripts: the number of transcripts.

        Raises:
            ValueError: naming the problem: no classes, an empty class, a repeated or
                out-of-range transcript id, a count that is NaN, infinite, negative or
                not a whole number, or a count vector of the wrong length.
        """
        if n_transcripts <= 0:
            raise ValueError(f"n_transcripts must be positive, got {n_transcripts}")
        if len(transcripts) == 0:
            raise ValueError("there are no equivalence classes")
        counts = _checked_counts(counts, len(transcripts))
        sizes = np.fromiter((len(members) for members in transcripts), np.int64, len(transcripts))
        if np.any(sizes == 0):
            raise ValueError(f"equivalence class {int(np.argmax(sizes == 0))} has no transcripts")
        flat = np.concatenate([np.asarray(members, np.int64).ravel() for members in transcripts])
        _check_ids(flat, sizes, n_transcripts)
        class_of = np.repeat(np.arange(sizes.size), sizes)
        shared = sizes[class_of] > 1  # the entries of classes with more than one transcript
        positions = _positions(np.bincount(flat[shared], minlength=n_transcripts))
        widths = _bucket_widths(sizes)
        starts = np.cumsum(sizes) - sizes
        rows_by_width = {int(width): np.flatnonzero(widths == width) for width in np.unique(widths)}
        buckets = tuple(
            ClassBucket(
                jnp.asarray(rows, jnp.int32),
                jnp.asarray(
                    _padded_columns(
                        positions[flat], starts[rows], sizes[rows], width, n_transcripts
                    )
                ),
            )
            for width, rows in rows_by_width.items()
        )
        # Width 1 is exactly size 1, so the shared classes are the buckets of width > 1.
        shared_rows = np.concatenate(
            [rows for width, rows in rows_by_width.items() if width > 1] + [np.zeros(0, np.int64)]
        )
        shared_ids = np.empty(sizes.size, np.int64)
        shared_ids[shared_rows] = np.arange(shared_rows.size)
        memberships = _memberships(
            positions[flat[shared]], shared_ids[class_of[shared]], n_transcripts, shared_rows.size
        )
        return cls(
            jnp.asarray(counts),
            buckets,
            jnp.asarray(positions, jnp.int32),
            memberships,
            n_transcripts,
        )

    @property
    def n_classes(self) -> int:
        """Number of equivalence classes."""
        return self.counts.shape[0]

    def with_counts(self, counts: Sequence[float] | np.ndarray) -> EquivalenceClasses:
        """The same classes with other read counts (another sample), checked as in
        `from_lists`."""
        counts = _checked_counts(counts, self.n_classes)
        return eqx.tree_at(lambda c: c.counts, self, jnp.asarray(counts))


def _positions(degrees: np.ndarray) -> np.ndarray:
    """Each transcript's position: transcripts sorted stably by the padded width of their list
    of shared classes (`degrees` long)."""
    by_position = np.argsort(_bucket_widths(degrees), kind="stable")
    positions = np.empty_like(by_position)
    positions[by_position] = np.arange(by_position.size)
    return positions


def _memberships(
    entry_positions: np.ndarray, entry_classes: np.ndarray, n_transcripts: int, n_shared: int
) -> tuple[Array, ...]:
    """The by-transcript view (see module doc) of the shared classes' entries, given as the
    position of each entry's transcript and the shared id of its class."""
    by_transcript = np.lexsort((entry_classes, entry_positions))
    degrees = np.bincount(entry_positions, minlength=n_transcripts)
    starts = np.cumsum(degrees) - degrees
    widths = _bucket_widths(degrees)
    memberships = []
    for width in np.unique(widths[widths > 0]):
        run = np.flatnonzero(widths == width)  # contiguous, by the choice of positions
        padded = _padded_columns(
            entry_classes[by_transcript], starts[run], degrees[run], int(width), n_shared
        )
        memberships.append(jnp.asarray(padded))
    return tuple(memberships)


def _padded_columns(
    values: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int, fill: int
) -> np.ndarray:
    """A ``(width, len(starts))`` int32 matrix whose column ``i`` holds
    ``values[starts[i] : starts[i] + lengths[i]]``, padded with `fill`."""
    slot = np.arange(width)[:, None]
    filled = slot < lengths[None, :]
    taken = values[np.where(filled, starts[None, :] + slot, 0)]
    return np.where(filled, taken, fill).astype(np.int32)


def _checked_counts(counts: Sequence[float] | np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape != (n_classes,):
        raise ValueError(f"counts has shape {counts.shape}, expected ({n_classes},): one per class")
    if not np.all(np.isfinite(counts)):
        raise ValueError("counts contain NaN or infinite values")
    if np.any(counts < 0):
        raise ValueError(
            f"counts must be non-negative; class {int(np.argmax(counts < 0))} has "
            f"{counts[counts < 0][0]:g}"
        )
    fractional = counts != np.round(counts)
    if np.any(fractional):
        raise ValueError(
            f"counts must be whole numbers of reads; class "
            f"{int(np.argmax(fractional))} has {counts[fractional][0]:g}"
        )
    return counts.astype(np.float32)


def _check_ids(flat: np.ndarray, sizes: np.ndarray, n_transcripts: int) -> None:
    class_of = np.repeat(np.arange(sizes.size), sizes)
    bad = (flat < 0) | (flat >= n_transcripts)
    if np.any(bad):
        first = int(np.argmax(bad))
        raise ValueError(
            f"equivalence class {class_of[first]} names transcript {flat[first]}, "
            f"outside [0, {n_transcripts})"
        )
    order = np.lexsort((flat, class_of))
    repeated = (np.diff(class_of[order]) == 0) & (np.diff(flat[order]) == 0)
    if np.any(repeated):
        first = order[int(np.argmax(repeated))]
        raise ValueError(
            f"equivalence class {class_of[first]} lists transcript {flat[first]} twice"
        )


def _bucket_widths(sizes: np.ndarray) -> np.ndarray:
    """Padded width for each list length: rounded up to a multiple of
    ``2 ** max(ceil(log2(size)) - 3, 0)``, giving the widths 1 to 8, 10, 12, 14, 16, 20, ...

    On the benchmark's table (`benchmarks.em`) an update takes 17% less time than with two
    widths per doubling; eight per doubling is slower again, as each bucket is its own loop."""
    octave = np.ceil(np.log2(np.maximum(sizes, 1))).astype(np.int64)
    step = 2 ** np.maximum(octave - 3, 0)
    return -(-sizes // step) * step
