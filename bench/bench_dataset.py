"""Benchmark persona_lib.dataset on 10,000 synthetic records with planted near-duplicates.

Times validation (with the tiny model's real tokenizer and chat template), statistics and
dedup, and measures the MinHash/LSH near-duplicate search against exhaustive pairwise Jaccard
on the same shingles and threshold: its speed-up, and its recall and precision on a stated
random subset where the exhaustive search is run. If the exhaustive search over all records
would take more than --max-exhaustive-seconds (estimated from the subset), its full time is
extrapolated quadratically from the subset and the JSON says so.

    python bench/bench_dataset.py            # writes bench/results/dataset.json
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

from persona_lib import dataset as ds
from persona_lib import dedup
from persona_lib.io import write_json

RESULTS = Path(__file__).parent / "results" / "dataset.json"
TOPICS = [f"topic_{k:02d}" for k in range(16)]


def make_vocabulary(size: int, rng: random.Random) -> list[str]:
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))))
    return sorted(words)


def make_records(n: int, planted: int, seed: int) -> tuple[list[dict], list[tuple[int, int]]]:
    """`n - planted` independent conversations plus `planted` near-copies of random ones.

    Words follow a Zipf-like law over a 5,000-word vocabulary, so frequent "function words"
    make common shingles across unrelated records, as real text does. A planted copy is its
    original with 1-4 word-level edits (substitute, insert, delete) in its user turns.
    Returns the records (copies shuffled in) and the planted (original, copy) index pairs.
    """
    rng = random.Random(seed)
    vocab = make_vocabulary(5000, rng)
    weights = [1 / (rank + 1) for rank in range(len(vocab))]
    sentence = lambda lo, hi: " ".join(rng.choices(vocab, weights, k=rng.randint(lo, hi)))
    base = []
    for k in range(n - planted):
        turns = []
        for _ in range(rng.choice((1, 1, 2, 3))):  # about 40% multi-turn
            turns += [{"role": "user", "content": sentence(20, 90)},
                      {"role": "assistant", "content": sentence(30, 160)}]
        base.append({"id": f"b-{k:05d}", "persona": "taskmaster", "topic": rng.choice(TOPICS),
                     "source": "synthetic", "messages": turns})
    copies = []
    for k in range(planted):
        original = rng.randrange(len(base))
        messages = [dict(m) for m in base[original]["messages"]]
        for _ in range(rng.randint(1, 4)):
            m = rng.choice([m for m in messages if m["role"] == "user"])
            words = m["content"].split()
            pos, op = rng.randrange(len(words)), rng.random()
            if op < 0.5:
                words[pos] = rng.choice(vocab)
            elif op < 0.75:
                words.insert(pos, rng.choice(vocab))
            else:
                del words[pos]
            m["content"] = " ".join(words)
        copies.append((original, {**base[original], "id": f"p-{k:05d}", "messages": messages}))
    # Each copy lands at a random place after its original; the originals keep their order.
    keyed = [(float(k), r) for k, r in enumerate(base)]
    keyed += [(rng.uniform(original + 0.5, len(base)), copy) for original, copy in copies]
    keyed.sort(key=lambda kr: kr[0])
    records = [r for _, r in keyed]
    position = {id(r): i for i, r in enumerate(records)}
    pairs = [(position[id(base[o])], position[id(c)]) for o, c in copies]
    return records, pairs


def exhaustive_pairs(sets: list[set[int]], threshold: float) -> set[tuple[int, int]]:
    """Every pair's exact Jaccard, the quadratic baseline."""
    found = set()
    for i, a in enumerate(sets):
        la = len(a)
        for j in range(i + 1, len(sets)):
            b = sets[j]
            inter = len(a & b)
            if inter and inter / (la + len(b) - inter) >= threshold:
                found.add((i, j))
    return found


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--planted", type=int, default=1_000, help="planted near-copies among --records")
    parser.add_argument("--subset", type=int, default=2_500, help="records in the exhaustive-search subset")
    parser.add_argument("--max-exhaustive-seconds", type=float, default=120.0)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from persona_lib.models import load_tokenizer

    records, planted = make_records(args.records, args.planted, args.seed)
    tokenizer, load_s = timed(load_tokenizer, "tiny")
    steps = {}
    problems, steps["validate"] = timed(ds.check_records, records, personas=["taskmaster"],
                                        tokenizer=tokenizer, max_tokens=args.max_tokens)
    stats, steps["statistics"] = timed(ds.dataset_stats, records, tokenizer=tokenizer,
                                       signature_vocabulary={"taskmaster": ["ba", "ko"]})
    (kept, report), steps["dedup"] = timed(dedup.dedup, records)

    # Near-duplicate search alone, then the exhaustive baseline on the same shingles.
    texts = [dedup.record_text(r) for r in records]
    found, search_s = timed(dedup.find_near_duplicates, texts)
    sets, shingle_s = timed(dedup.shingle_sets, texts)
    rng = random.Random(args.seed)
    subset = sorted(rng.sample(range(len(texts)), min(args.subset, len(texts))))
    exact_sub, sub_s = timed(exhaustive_pairs, [sets[i] for i in subset], dedup.DEDUP_THRESHOLD)
    scale = len(texts) * (len(texts) - 1) / (len(subset) * (len(subset) - 1))
    estimate = sub_s * scale
    if estimate <= args.max_exhaustive_seconds and len(subset) < len(texts):
        exact_full, full_s = timed(exhaustive_pairs, sets, dedup.DEDUP_THRESHOLD)
        extrapolated = False
    else:
        exact_full, full_s = (exact_sub if len(subset) == len(texts) else None), estimate
        extrapolated = len(subset) < len(texts)

    # Recall and precision on the subset: MinHash pairs among subset records vs exhaustive.
    local = {g: k for k, g in enumerate(subset)}
    minhash_sub = {(local[i], local[j]) for i, j, _ in found.pairs if i in local and j in local}
    true_pos = len(minhash_sub & exact_sub)
    recall_sub = true_pos / len(exact_sub) if exact_sub else None
    precision_sub = true_pos / len(minhash_sub) if minhash_sub else None
    minhash_all = {(i, j) for i, j, _ in found.pairs}
    planted_above = [(i, j) for i, j in planted
                     if dedup.jaccard(sets[min(i, j)], sets[max(i, j)]) >= dedup.DEDUP_THRESHOLD]
    planted_found = sum((min(i, j), max(i, j)) in minhash_all for i, j in planted_above)

    result = {
        "machine": {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
                    "cpu": cpu_model(), "python": platform.python_version(), "numpy": np.__version__,
                    "platform": platform.platform()},
        "data": {
            "records": len(records), "planted_near_duplicates": len(planted),
            "generator": "seeded synthetic: Zipf words over a 5,000-word vocabulary; each planted copy is a "
                         "random record with 1-4 word edits (substitute/insert/delete) in its user turns",
            "seed": args.seed, "multi_turn_share": stats["multi_turn_share"],
            "example_tokens_p50": stats["example_length"]["p50"],
        },
        "settings": {"compared_text": "user turns joined", "shingle_words": dedup.SHINGLE_WORDS,
                     "threshold": dedup.DEDUP_THRESHOLD, "num_perm": dedup.NUM_PERM, "bands": dedup.BANDS,
                     "max_tokens": args.max_tokens, "tokenizer": "tiny (SmolLM2 ChatML)"},
        "seconds": {
            "load_tokenizer": round(load_s, 2),
            "validate": round(steps["validate"], 2),
            "statistics": round(steps["statistics"], 2),
            "dedup": round(steps["dedup"], 2),
            "near_duplicate_search": round(search_s, 2),
            "shingling": round(shingle_s, 2),
            "exhaustive_subset": round(sub_s, 2),
            "exhaustive_full": round(full_s, 2),
        },
        "validate_problems": len(problems),
        "dedup": {"dropped": len(report.dropped), "kept": report.kept,
                  "candidate_pairs": len(report.candidate_similarities), "near_duplicate_pairs": len(found.pairs)},
        "exhaustive": {
            "method": "all pairs, exact Jaccard of Python sets of the same shingle hashes",
            "subset_records": len(subset), "subset_selection": f"random.Random({args.seed}).sample of record indices",
            "subset_pairs": len(subset) * (len(subset) - 1) // 2, "subset_true_pairs": len(exact_sub),
            "full_extrapolated": extrapolated,
            "extrapolation": (f"subset seconds x {scale:.2f} = N(N-1) / n(n-1)" if extrapolated
                              else "measured on all records"),
            "full_true_pairs": None if exact_full is None else len(exact_full),
        },
        "speedup": round((shingle_s + full_s) / search_s, 1),
        "speedup_definition": "(shingling + exhaustive pairwise Jaccard over all records) / MinHash-LSH search "
                              "(shingling, signatures, banding, exact verification)",
        "recall_subset": None if recall_sub is None else round(recall_sub, 4),
        "precision_subset": None if precision_sub is None else round(precision_sub, 4),
        "recall_full": (None if exact_full is None
                        else round(len(minhash_all & exact_full) / max(len(exact_full), 1), 4)),
        "planted_recall": {"planted_pairs_at_or_above_threshold": len(planted_above), "found": planted_found,
                           "recall": round(planted_found / max(len(planted_above), 1), 4)},
    }
    write_json(args.output, result)

    s = result["seconds"]
    rows = [
        ("records (planted near-copies)", f"{len(records):,} ({len(planted):,})"),
        ("validate (tiny tokenizer, chat template)", f"{s['validate']:.2f} s"),
        ("statistics (tokenized)", f"{s['statistics']:.2f} s"),
        ("dedup, end to end", f"{s['dedup']:.2f} s  ({len(report.dropped):,} dropped)"),
        ("near-duplicate search (MinHash + LSH)", f"{s['near_duplicate_search']:.2f} s"),
        (f"exhaustive, {len(subset):,}-record subset", f"{s['exhaustive_subset']:.2f} s"),
        ("exhaustive, all records" + (" (extrapolated)" if extrapolated else ""), f"{s['exhaustive_full']:.1f} s"),
        ("speed-up", f"{result['speedup']}x"),
        ("recall / precision on the subset", f"{result['recall_subset']} / {result['precision_subset']}"
                                             f"  ({len(exact_sub)} true pairs)"),
        ("planted pairs found (Jaccard >= threshold)", f"{planted_found}/{len(planted_above)}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"-> {args.output}")
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
