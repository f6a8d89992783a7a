"""Near-deduplication of Pile-format shards with MinHash-LSH: the Pile's "deduped" variant.

The Pile's deduped variant removed near-duplicates globally with MinHash-LSH at Jaccard
threshold 0.87 over word 5-grams (EleutherAI used datasketch). This package does the same as
five restartable stages that fit one Snakemake job each:

1. :func:`compute_signatures` -- per input shard: per document, one 64-bit hash per LSH band,
   a 128-bit hash of the exact text and the b-bit MinHash signature (low 8 bits of each value).
2. :func:`bucket_band` -- per band (or hash partition of a band) across all shards: documents
   with equal band hashes are candidate pairs; a pair becomes an edge only if its Jaccard
   similarity estimated from the memory-mapped b-bit signatures is at least the threshold
   (LSH alone lets through pairs that share one band by chance). The pseudo-band
   :data:`EXACT_BAND` buckets the exact-text hashes, unverified, so exact duplicates always go.
3. :func:`cluster` -- union-find over all edges; in each cluster the first document in
   (shard, line) order is kept, the others are removed.
4. :func:`filter_shard` -- per shard: copy the kept lines byte-for-byte to a new ``.jsonl.zst``
   and write a per-shard report.
5. :func:`merge_reports` -- totals, removals per ``pile_set_name``, and a verification of the
   decisions against exact Jaccard similarity on sampled pairs.

Text normalisation: ``text.lower().split()`` (Unicode lower case, split on any whitespace run);
shingles are the *distinct* word n-grams joined by one space. A document with fewer than n words
is one shingle (all its words); a document with no words has no shingles and takes part only
in exact-duplicate removal. Digits and punctuation are kept: normalising digits away (as
datatrove does) makes numbered documents such as "item 1 ...", "item 2 ..." collide.

MinHash: datasketch 2.0.0's default scheme ("affine32"): each shingle is hashed with
``datasketch.hashfunc.sha1_hash32`` of its UTF-8 bytes, pre-mixed with the 32-bit MurmurHash3
finalizer, then permuted ``a*h + b mod 2**32`` with datasketch's ``(a, b)`` for ``num_perm`` and
``seed``. Signatures are bit-identical to ``datasketch.MinHash(num_perm, seed)`` fed the same
shingles (checked in ``tests/test_dedup.py``); the permutations come from datasketch itself, the
per-document loop is replaced by one numpy pass over many documents at once.

Why this and not datasketch or datatrove directly (``benchmarks/dedup_throughput.py``, 20k
documents / 84 MB, CPU seconds on this 2-core machine): the whole pipeline took 10.2 s with
verification (1970 documents/s per core; signatures 8.7 s), 9.9 s without; plain datasketch
``MinHash`` + ``MinHashLSH`` in one process 12.1 s (1660/s) and removed the *identical* 4624
documents as the pipeline without verification; datatrove 0.10.1's four MinHash stages 21.4 s
(930/s, an earlier run). The deciding reasons besides speed: ``MinHashLSH`` holds every
band of every document in one process (~4 KB per document measured, ~0.8 TB for the Pile);
datatrove normalises digits, defaults to a spaCy word tokenizer, uses its own hash family and
skips "completed" tasks on rerun.

Every stage is deterministic (same inputs and parameters give byte-identical outputs), never
trusts an existing output (it always recomputes), and writes each output under a temporary name
in the output's directory, renamed into place only when complete.

The stages live one per module: :mod:`.signatures`, :mod:`.buckets`, :mod:`.clusters`,
:mod:`.filter` and :mod:`.report`; beside them :mod:`.params` (parameters, shared constants,
:class:`DedupFileError`), :mod:`.minhash` (shingles, MinHash, Jaccard), :mod:`.files` (the
stages' npz and JSON files) and :mod:`.pipeline` (every stage in one process).
"""

from pythia_suite.data.dedup.buckets import bands_of_group, bucket_band
from pythia_suite.data.dedup.clusters import cluster
from pythia_suite.data.dedup.filter import filter_shard
from pythia_suite.data.dedup.minhash import (
    bbit_signatures,
    estimate_jaccard,
    exact_jaccard,
    minhash_signatures,
    shingles,
)
from pythia_suite.data.dedup.params import (
    EXACT_BAND,
    DedupFileError,
    DedupParams,
    choose_bands_rows,
)
from pythia_suite.data.dedup.pipeline import run_pipeline
from pythia_suite.data.dedup.report import SampleCheck, merge_reports
from pythia_suite.data.dedup.signatures import compute_signatures

__all__ = [
    "EXACT_BAND",
    "DedupFileError",
    "DedupParams",
    "SampleCheck",
    "bands_of_group",
    "bbit_signatures",
    "bucket_band",
    "choose_bands_rows",
    "cluster",
    "compute_signatures",
    "estimate_jaccard",
    "exact_jaccard",
    "filter_shard",
    "merge_reports",
    "minhash_signatures",
    "run_pipeline",
    "shingles",
]
