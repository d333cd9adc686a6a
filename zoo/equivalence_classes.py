"""`EquivalenceClasses`: read counts over equivalence classes of transcripts, stored sparsely.

An equivalence class is the set of transcripts a read is compatible with (kallisto's
pseudoalignment, salmon's selective alignment); reads with the same set are counted together.
Quantification only needs, per class, its read count and its transcript set.

The sets are stored as padded index lists grouped into buckets of similar size: a bucket is
a ``(width, n_classes_in_bucket)`` matrix of transcript ids, one column per class, padded
with the id ``n_transcripts``. The widths are 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (two per
doubling): a class is padded by less than half its size, memory grows with the total class
size (never with reads x transcripts), and few buckets keep compilation short. Dense
columns let the EM share each class's reads with elementwise arithmetic instead of segment
reductions.
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
        transcripts: column ``i`` holds the transcript ids of class ``classes[i]``, padded
            with ``n_transcripts``.
    """

    classes: Int[Array, " n"]
    transcripts: Int[Array, "width n"]


class EquivalenceClasses(eqx.Module):
    """Read counts over equivalence classes, with each class's transcripts (see module doc).

    Build with `EquivalenceClasses.from_lists`, which checks the input.

    Attributes:
        counts: reads in each class (float so gradients can flow to them).
        buckets: the classes' transcript lists, bucketed by size.
        n_transcripts: number of transcripts the ids refer to.
    """

    counts: Float[Array, " n_classes"]
    buckets: tuple[ClassBucket, ...]
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
        starts = np.cumsum(sizes) - sizes
        widths = _bucket_widths(sizes)
        buckets = []
        for width in np.unique(widths):
            rows = np.flatnonzero(widths == width)
            padded = np.full((int(width), rows.size), n_transcripts, np.int32)
            for slot in range(int(width)):
                filled = sizes[rows] > slot
                padded[slot, filled] = flat[starts[rows[filled]] + slot]
            buckets.append(ClassBucket(jnp.asarray(rows, jnp.int32), jnp.asarray(padded)))
        return cls(jnp.asarray(counts), tuple(buckets), n_transcripts)

    @property
    def n_classes(self) -> int:
        """Number of equivalence classes."""
        return self.counts.shape[0]

    def with_counts(self, counts: Sequence[float] | np.ndarray) -> EquivalenceClasses:
        """The same classes with other read counts (another sample), checked as in
        `from_lists`."""
        counts = _checked_counts(counts, self.n_classes)
        return eqx.tree_at(lambda c: c.counts, self, jnp.asarray(counts))


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
    """Padded width for each class size: rounded up to a multiple of
    ``2 ** max(ceil(log2(size)) - 2, 0)``, giving the widths 1, 2, 3, 4, 6, 8, 12, 16, ..."""
    octave = np.ceil(np.log2(np.maximum(sizes, 1))).astype(np.int64)
    step = 2 ** np.maximum(octave - 2, 0)
    return -(-sizes // step) * step
