"""Near-duplicate conversations: one search for the dataset (lesson 2's dedup) and for generation
(lesson 3 rejects a generated conversation that copies one already kept).

MinHash (Broder, 1997) + LSH banding over word-shingle sets, verified with exact Jaccard:
the Self-Instruct tradition of dropping near-copies, at sub-quadratic cost.

Defaults: 3-word shingles (long enough that shared stock phrases like "how do i" do not make
two different requests look alike, short enough that a one-word edit changes only three
shingles); Jaccard threshold 0.7 (a copy with light edits: about 18% of each text's shingles
differ, e.g. one word in 17 substituted here and there);
128 permutations in 32 bands of 4 rows. Two sets with Jaccard s agree on one MinHash row with
probability s, so they share at least one band bucket with probability
    P(s) = 1 - (1 - s**4)**32,
an S-curve that rises around (1/32)**(1/4) = 0.42: P(0.7) = 0.9998, P(0.5) = 0.87,
P(0.3) = 0.23, P(0.1) = 0.003. Nearly every pair at the threshold becomes a candidate, and the
extra candidates between 0.4 and 0.7 are cheap to discard with the exact Jaccard check, so the
reported pairs have precision 1 by construction and recall limited only by the S-curve.

`dedup` searches a whole set at once; `NearDupIndex` adds records one at a time with the same
shingles, signatures, bands and exact check (a generation run asks once per record).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from persona_lib.dataset import words

SHINGLE_WORDS = 3
DEDUP_THRESHOLD = 0.7
NUM_PERM = 128
BANDS = 32

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_SHINGLE_MULT = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                          0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53], dtype=np.uint64)
_MINHASH_CHUNK = 1 << 15  # shingles per vectorised block: (32768 x 128) uint64 = 32 MB


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the whole 64-bit word."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _shingle_hashes(texts: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Every text's set of word n-gram hashes, as one flat uint64 array (sorted, unique per text)
    and offsets (text k owns flat[offsets[k]:offsets[k+1]]). A text shorter than `ngram` words
    is one shingle; an empty text has none. Hashes are stable across runs and machines.
    """
    if not 1 <= ngram <= len(_SHINGLE_MULT):
        raise ValueError(f"ngram must be between 1 and {len(_SHINGLE_MULT)}, not {ngram}")
    vocab: dict[str, int] = {}
    word_ids: list[int] = []
    lengths = np.zeros(len(texts), dtype=np.int64)
    for k, text in enumerate(texts):
        tokens = words(text)
        lengths[k] = len(tokens)
        for w in tokens:
            if w not in vocab:
                vocab[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
            word_ids.append(vocab[w])
    flat_words = np.array(word_ids, dtype=np.uint64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    doc_of_word = np.repeat(np.arange(len(texts)), lengths)
    # A shingle starts at every word with `ngram - 1` more words of the same text after it.
    pos = np.arange(max(len(flat_words) - ngram + 1, 0))
    pos = pos[starts[doc_of_word[pos] + 1] - pos >= ngram]
    h = np.zeros(len(pos), dtype=np.uint64)
    for j in range(ngram):
        h += flat_words[pos + j] * _SHINGLE_MULT[j]
    docs = [doc_of_word[pos]]
    hashes = [_mix64(h)]
    for k in np.flatnonzero((lengths > 0) & (lengths < ngram)):  # short texts: one shingle each
        part = flat_words[starts[k]:starts[k + 1]]
        hashes.append(_mix64(np.array([np.sum(part * _SHINGLE_MULT[:len(part)])], dtype=np.uint64)))
        docs.append(np.array([k]))
    doc = np.concatenate(docs).astype(np.int64)
    h = np.concatenate(hashes)
    order = np.lexsort((h, doc))
    doc, h = doc[order], h[order]
    keep = np.ones(len(h), dtype=bool)
    keep[1:] = (doc[1:] != doc[:-1]) | (h[1:] != h[:-1])
    doc, h = doc[keep], h[keep]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(doc, minlength=len(texts)))])
    return h, offsets


def shingle_sets(texts: Sequence[str], ngram: int = SHINGLE_WORDS) -> list[set[int]]:
    """Each text's word n-gram shingles as a set of stable 64-bit hashes (for exact Jaccard)."""
    flat, offsets = _shingle_hashes(texts, ngram)
    values = flat.tolist()
    return [set(values[offsets[k]:offsets[k + 1]]) for k in range(len(texts))]


def jaccard(a: set, b: set) -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def minhash_signatures(flat: np.ndarray, offsets: np.ndarray, num_perm: int = NUM_PERM,
                       seed: int = 0) -> np.ndarray:
    """(texts, num_perm) uint32 MinHash signatures of the shingle sets in (flat, offsets).

    Each "permutation" is a multiply-shift hash h(x) = (a*x + b) mod 2**64 >> 32 with random
    odd a; inputs are already well-mixed 64-bit hashes. A text without shingles keeps the
    all-ones signature and is excluded from candidate search by the caller.
    """
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
    b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
    n = len(offsets) - 1
    sig = np.full((n, num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    counts = np.diff(offsets)
    first = 0
    while first < n:
        last = max(int(np.searchsorted(offsets, offsets[first] + _MINHASH_CHUNK, side="right")) - 1, first + 1)
        lo, hi = offsets[first], offsets[last]
        docs = first + np.flatnonzero(counts[first:last] > 0)
        if len(docs):
            x = flat[lo:hi, None]
            values = ((x * a + b) >> np.uint64(32)).astype(np.uint32)
            sig[docs] = np.minimum.reduceat(values, offsets[docs] - lo, axis=0)
        first = last
    return sig


def _lsh_candidates(sig: np.ndarray, active: np.ndarray, bands: int) -> np.ndarray:
    """Pairs (i < j) of active texts that share at least one band: an (m, 2) int64 array."""
    n, num_perm = sig.shape
    if num_perm % bands:
        raise ValueError(f"num_perm={num_perm} must be a multiple of bands={bands}")
    rows = num_perm // bands
    idx = np.flatnonzero(active)
    found = [np.zeros(0, dtype=np.int64)]
    for band in range(bands):
        key = np.full(len(idx), band, dtype=np.uint64)
        for r in range(band * rows, (band + 1) * rows):
            key = _mix64(key * _SHINGLE_MULT[0] + sig[idx, r].astype(np.uint64))
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        bounds = np.flatnonzero(sorted_key[1:] != sorted_key[:-1]) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [len(idx)]])
        for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
            members = np.sort(idx[order[s:e]])
            i, j = np.triu_indices(len(members), k=1)
            found.append(members[i] * n + members[j])
    codes = np.unique(np.concatenate(found))
    return np.stack([codes // n, codes % n], axis=1) if len(codes) else np.zeros((0, 2), dtype=np.int64)


@dataclass(frozen=True)
class NearDuplicates:
    """Result of `find_near_duplicates`: the verified pairs and every candidate's similarity."""

    pairs: list[tuple[int, int, float]]  # (i, j, Jaccard) with i < j and Jaccard >= threshold
    candidate_similarities: list[float]  # exact Jaccard of every LSH candidate pair (for plots)
    threshold: float


def find_near_duplicates(texts: Sequence[str], *, threshold: float = DEDUP_THRESHOLD,
                         ngram: int = SHINGLE_WORDS, num_perm: int = NUM_PERM, bands: int = BANDS,
                         seed: int = 0) -> NearDuplicates:
    """Pairs of texts whose word-shingle sets have Jaccard >= threshold, without comparing all pairs.

    MinHash + LSH propose candidates; each candidate is verified with exact Jaccard.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], not {threshold}")
    flat, offsets = _shingle_hashes(texts, ngram)
    sig = minhash_signatures(flat, offsets, num_perm, seed)
    candidates = _lsh_candidates(sig, np.diff(offsets) > 0, bands)
    values = flat.tolist()
    sets: dict[int, set[int]] = {}
    sims = []
    for i, j in candidates.tolist():
        for k in (i, j):
            if k not in sets:
                sets[k] = set(values[offsets[k]:offsets[k + 1]])
        sims.append(jaccard(sets[i], sets[j]))
    pairs = [(i, j, s) for (i, j), s in zip(candidates.tolist(), sims) if s >= threshold]
    return NearDuplicates(pairs=pairs, candidate_similarities=sims, threshold=threshold)


def record_text(record: dict, text: str = "user") -> str:
    """The text dedup compares: "user" (user turns joined, the default: two records asking the
    same thing are duplicates whatever the replies say) or "conversation" (every message)."""
    if text not in ("user", "conversation"):
        raise ValueError(f"text must be 'user' or 'conversation', not {text!r}")
    return "\n".join(m["content"] for m in record["messages"] if text == "conversation" or m["role"] == "user")


def _record_id(record: dict, position: int) -> str:
    return str(record.get("id", f"record {position + 1}"))


@dataclass(frozen=True)
class Duplicate:
    """A record dedup dropped, and the kept (or existing) record it nearly copies."""

    index: int  # position in the records passed to dedup
    id: str
    duplicate_of: str  # id of the kept record, or of the record in `against`
    similarity: float  # exact Jaccard of their shingle sets
    in_against: bool  # True when the original is in the existing set

    def __str__(self) -> str:
        where = " (existing set)" if self.in_against else ""
        return f"{self.id} duplicates {self.duplicate_of}{where}: Jaccard {self.similarity:.2f}"


@dataclass(frozen=True)
class DedupReport:
    """What dedup did: the dropped records with their reasons, and every candidate's similarity
    (plot them with `plots.duplicate_similarity_histogram`)."""

    dropped: list[Duplicate]
    kept: int
    candidate_similarities: list[float]
    threshold: float
    text: str


def dedup(records: Sequence[dict], *, against: Sequence[dict] = (), text: str = "user",
          threshold: float = DEDUP_THRESHOLD, ngram: int = SHINGLE_WORDS, num_perm: int = NUM_PERM,
          bands: int = BANDS, seed: int = 0) -> tuple[list[dict], DedupReport]:
    """Drop near-duplicates, keeping the first occurrence; returns (kept records, report).

    A record is dropped when it is a near-duplicate of an earlier kept record or of any record
    in `against` (an existing set new records must not repeat). The report names, for each
    dropped record, the record it duplicates and their similarity. Records are not copied or
    changed.
    """
    texts = [record_text(r, text) for r in against] + [record_text(r, text) for r in records]
    found = find_near_duplicates(texts, threshold=threshold, ngram=ngram, num_perm=num_perm,
                                 bands=bands, seed=seed)
    base = len(against)
    earlier: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for i, j, s in found.pairs:
        if j >= base:
            earlier[j].append((i, s))
    kept_flags = [True] * len(texts)
    dropped = []
    for j in range(base, len(texts)):
        matches = [(s, -i) for i, s in earlier[j] if i < base or kept_flags[i]]
        if matches:
            s, neg_i = max(matches)
            i = -neg_i
            kept_flags[j] = False
            original = against[i] if i < base else records[i - base]
            dropped.append(Duplicate(index=j - base, id=_record_id(records[j - base], j - base),
                                     duplicate_of=_record_id(original, i if i < base else i - base),
                                     similarity=round(s, 4), in_against=i < base))
    kept = [r for r, keep in zip(records, kept_flags[base:]) if keep]
    return kept, DedupReport(dropped=dropped, kept=len(kept), candidate_similarities=found.candidate_similarities,
                             threshold=threshold, text=text)


class NearDupIndex:
    """Incremental near-duplicate search with the dataset module's MinHash: the same shingles,
    signatures, LSH bands and exact-Jaccard check as `dedup`, but each new record costs
    one signature instead of re-hashing the whole set (a generation run asks once per record)."""

    def __init__(self, records: Iterable[dict] = (), *, threshold: float = DEDUP_THRESHOLD,
                 text: str = "user"):
        self.threshold, self.text = threshold, text
        self.rows = NUM_PERM // BANDS
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(BANDS)]
        self.sets: list[set[int]] = []
        self.ids: list[str] = []
        self.add_many(list(records))

    def _signatures(self, texts: list[str]) -> tuple[list[set[int]], np.ndarray]:
        sets = shingle_sets(texts)
        flat = np.array([h for s in sets for h in sorted(s)], dtype=np.uint64)
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in sets])]).astype(np.int64)
        return sets, minhash_signatures(flat, offsets, NUM_PERM, seed=0)

    def _bands(self, sig: np.ndarray) -> list[bytes]:
        return [sig[b * self.rows:(b + 1) * self.rows].tobytes() for b in range(BANDS)]

    def add_many(self, records: list[dict]) -> None:
        if not records:
            return
        sets, sigs = self._signatures([record_text(r, self.text) for r in records])
        for record, shingles, sig in zip(records, sets, sigs):
            self._add(str(record.get("id", "")), shingles, sig)

    def _add(self, rid: str, shingles: set[int], sig: np.ndarray) -> None:
        k = len(self.sets)
        self.sets.append(shingles)
        self.ids.append(rid)
        if shingles:  # an empty text has no signature worth bucketing (as in dedup)
            for band, key in enumerate(self._bands(sig)):
                self.buckets[band].setdefault(key, []).append(k)

    def check_and_add(self, record: dict) -> tuple[str, float] | None:
        """(id, Jaccard) of the most similar indexed record at or over the threshold, or None;
        a record that is not a near-duplicate is added to the index."""
        (shingles,), (sig,) = self._signatures([record_text(record, self.text)])
        if shingles:
            candidates = {k for band, key in enumerate(self._bands(sig)) for k in self.buckets[band].get(key, ())}
            best = max(((jaccard(shingles, self.sets[k]), k) for k in candidates), default=(0.0, -1))
            if best[0] >= self.threshold:
                return self.ids[best[1]], round(best[0], 4)
        self._add(str(record.get("id", "")), shingles, sig)
        return None

    def __len__(self) -> int:
        return len(self.sets)
