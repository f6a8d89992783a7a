"""The dedup parameters, the constants every stage shares, and the error of a bad stage file."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

#: Band number of the exact-text pseudo-band in :func:`bucket_band`.
EXACT_BAND = -1

# 2: signatures hold the b-bit signature "verify"; edge files hold rejected pairs and counts.
FORMAT_VERSION = 2
# dtype of the b-bit signature per verify_bits (0: no verification, no array).
VERIFY_DTYPES = {0: None, 8: np.uint8, 16: np.uint16}
# A document id packs (shard index, 1-based line number) into one uint64, so sorting ids sorts
# documents in (shard, line) order.
LINE_BITS = 32


class DedupFileError(ValueError):
    """A dedup stage's input file is missing, corrupt, of the wrong kind or inconsistent.

    Attributes:
        path: the offending file.
        reason: what is wrong.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _integrate(f, lo: float, hi: float, steps: int = 2048) -> float:
    """Composite Simpson integral of ``f`` over ``[lo, hi]`` (``steps`` even)."""
    if hi <= lo:
        return 0.0
    x = np.linspace(lo, hi, steps + 1)
    y = f(x)
    h = (hi - lo) / steps
    return float(h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum()))


def choose_bands_rows(
    threshold: float,
    num_perm: int,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> tuple[int, int]:
    """Return ``(bands, rows)`` with ``bands * rows <= num_perm`` for an LSH at ``threshold``.

    Minimises ``fp_weight * P(false positive) + fn_weight * P(false negative)``, each the
    integral of the LSH collision curve ``1 - (1 - s**rows)**bands`` below (resp. of its
    complement above) the threshold, as datasketch's ``MinHashLSH`` does. For 0.87 and 128
    permutations this gives 7 bands of 18 rows, as datasketch does.

    Raises:
        ValueError: ``threshold`` outside (0, 1), ``num_perm`` < 2 or weights negative or both 0.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    if num_perm < 2:
        raise ValueError(f"num_perm must be at least 2, got {num_perm!r}")
    if (
        false_positive_weight < 0
        or false_negative_weight < 0
        or not (false_positive_weight + false_negative_weight)
    ):
        raise ValueError("false positive/negative weights must be >= 0 and not both 0")
    best, best_error = (0, 0), math.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = _integrate(lambda s, b=bands, r=rows: 1 - (1 - s**r) ** b, 0.0, threshold)
            fn = _integrate(lambda s, b=bands, r=rows: (1 - s**r) ** b, threshold, 1.0)
            error = fp * false_positive_weight + fn * false_negative_weight
            if error < best_error:
                best, best_error = (bands, rows), error
    return best


@dataclass(frozen=True)
class DedupParams:
    """Parameters of the near-deduplication (keep them in the project config).

    Attributes:
        threshold: Jaccard similarity of shingle sets above which documents are duplicates.
        ngram: shingle size in words.
        num_perm: MinHash permutations per document.
        bands, rows: LSH banding; ``None`` (both) means :func:`choose_bands_rows`.
        seed: seed of datasketch's permutations.
        verify_bits: bits kept of each MinHash value for candidate verification (8 or 16), or
            0 for none (plain LSH: every candidate pair of a band merges).
        verify_margin: a candidate pair of a band merges only if its b-bit estimated Jaccard
            similarity is at least ``threshold - verify_margin``.
    """

    threshold: float = 0.87
    ngram: int = 5
    num_perm: int = 128
    bands: int | None = None
    rows: int | None = None
    seed: int = 1
    verify_bits: int = 8
    verify_margin: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram!r}")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither")
        if self.bands is None:
            bands, rows = choose_bands_rows(self.threshold, self.num_perm)
            object.__setattr__(self, "bands", bands)
            object.__setattr__(self, "rows", rows)
        if self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"need bands >= 1, rows >= 1 and bands*rows <= num_perm={self.num_perm}, "
                f"got bands={self.bands}, rows={self.rows}"
            )
        if self.verify_bits not in VERIFY_DTYPES:
            raise ValueError(f"verify_bits must be one of 0, 8, 16, got {self.verify_bits!r}")
        if not 0.0 <= self.verify_margin < self.threshold:
            raise ValueError(f"verify_margin must be in [0, threshold), got {self.verify_margin!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, dedup: Mapping) -> DedupParams:
        """The parameters of the config's ``data.dedup`` section (bands and rows chosen).

        Raises:
            KeyError: a parameter is missing from ``dedup``.
            ValueError: a parameter is out of range (see the class).
        """
        return cls(
            threshold=dedup["threshold"],
            ngram=dedup["ngram"],
            num_perm=dedup["num_perm"],
            seed=dedup["seed"],
            verify_bits=dedup["verify_bits"],
            verify_margin=dedup["verify_margin"],
        )
