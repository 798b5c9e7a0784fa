"""``frip eval probes``: what every probe mode shows each party, what it costs, and what a
curious matcher can learn from what it sees.

Per probe mode (plain, pe-miu at each block size, encrypted, shared):

- who holds what (edge, each matcher, key service, store), as the code has it;
- upload bytes per 512-d probe (``encode_probe`` of the mode, TenSEAL ``fast`` preset);
- identify latency at 1,000 and 100,000 registrants (fast scorer, one thread, same run):
  the edge's encoding, every block's scoring and the key service's decryption and
  decision; ``shared`` scores in two matcher processes of its own, as the engine does.
  One encrypted 4,096-slot block is scored once per block of the gallery (the work and
  memory traffic of a gallery of that many blocks, without encrypting 100,000 templates);
- attacks on what one matcher sees of each probe, on lfw-large embedded by arcface: gender
  SVMs (the WIFS 2023 protocol: poly, RBF and sigmoid kernels, a gender-balanced sample,
  identity-disjoint folds), re-identification (rank-1 of what the matcher saw against a
  known embedding of each person: cosine, the PE-MIU comparator where it applies), and an
  order-invariant attacker (sorted values, sorted per-block norms and block statistics,
  which no block shuffle changes). An encrypted probe's view is a ciphertext (IND-CPA
  under RLWE): no attack is run on it;
- the WIFS 2023 gender table (arcface, unprotected and PE-MIU 16/32/64/128) beside the
  published figures, and the reversibility proxy: at each forced permutation complexity,
  the share of protected templates that still match their own unprotected original at
  the thresholds of FMR 1% and 0.1% (no image generator is trained here).

Embeddings stay in memory; the outputs (JSON, Markdown, PNG) hold figures only.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from frip_engine import pemiu
from frip_engine.parallel import check_main_guard
from frip_eval.data import Dataset, Embedded
from frip_eval.eval_protection import DEFAULT_BLOCK_SIZES, balanced_sample, gender_accuracy
from frip_eval.plots import pyplot

PRESET = "fast"
REGISTRANTS = (1_000, 100_000)
INVARIANT_BLOCK = 32  # the block size the order-invariant attacker cuts a plain view into
CHANCE = 0.5  # gender-balanced sample
# WIFS 2023 (Reversing deep face embeddings protected by PE-MIU), as summarised in
# /work/shared/DESIGN.md: gender SVM accuracy on LFW, ArcFace/ElasticFace templates.
PUBLISHED_GENDER = {"unprotected": 0.89, "pe-miu": 0.50}

HOLDINGS: dict[str, dict[str, str]] = {
    "plain": {
        "edge": "image, embedding q",
        "matcher": "q in the clear; encrypted gallery; public key",
        "key service": "secret key; decrypted scores",
        "store": "encrypted gallery, slot map",
    },
    "pe-miu": {
        "edge": "image, embedding q, the fresh block permutation",
        "matcher": "block-shuffled q; encrypted shuffled gallery; public key",
        "key service": "secret key; block-pair products; assignment",
        "store": "encrypted shuffled gallery, slot map",
    },
    "encrypted": {
        "edge": "image, embedding q; public key",
        "matcher": "Enc(q) (IND-CPA); encrypted gallery; public key",
        "key service": "secret key; decrypted scores",
        "store": "encrypted gallery, slot map",
    },
    "shared": {
        "edge": "image, embedding q, constants k, both shares",
        "matcher": "one share (uniform in Z_p^d); encrypted gallery; public key",
        "key service": "secret key; both score ciphertexts; decrypted scores",
        "store": "encrypted gallery, slot map",
    },
}


def modes(block_sizes: Sequence[int]) -> list[str]:
    return ["plain", *[f"pe-miu-{b}" for b in block_sizes], "encrypted", "shared"]


def _family(mode: str) -> str:
    return "pe-miu" if mode.startswith("pe-miu") else mode


# ------------------------------------------------------------------------------ cost
def _backend(probe: str) -> Any:
    from frip_engine import plugins

    return plugins.create("he_backend", "tenseal", preset=PRESET, scorer="fast", probe=probe)


_party: dict[str, Any] = {}


def _party_start(public: bytes, block: bytes) -> None:
    """A matcher process of the shared mode: the public context and the block only."""
    matcher = _backend("shared").matcher(public)
    _party.update(matcher=matcher, block=matcher.load(block))


def _party_score(share: bytes, passes: int) -> list[bytes]:
    matcher = _party["matcher"]
    parsed = matcher.parse_probe(share)
    return [matcher.score(_party["block"], parsed) for _ in range(passes)]


def _decide(scores: np.ndarray, occupants: dict[int, str]) -> None:
    """The key service's decision on one block's decrypted scores (top 1)."""
    from frip_engine.keyservice import KeyService

    KeyService._best_in_block(0, scores, occupants, 1)


def cost(
    block_sizes: Sequence[int],
    registrants: Sequence[int] = REGISTRANTS,
    repeats: int = 3,
    dimension: int = 512,
    only: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Upload bytes and identify latency (seconds) of every probe mode (or those named in
    ``only``; plain always), see the module docstring.

    The modes are timed in rounds: each of ``repeats`` rounds runs one probe through every
    mode in turn (pe-miu and encrypted beyond 1,000 registrants in the first round only),
    so a mode's ratio to plain is taken within a round, on the same probe and the same
    machine load, and reported as the median over rounds with its range."""
    from frip_engine import sharing

    chosen = [m for m in modes(block_sizes) if only is None or m == "plain" or m in only]
    plain_backend = _backend("plain")
    public, secret = plain_backend.keygen()
    rng = np.random.default_rng(0)
    plain = plain_backend.matcher(public)
    rows = rng.standard_normal((plain.slots, dimension))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    data = plain.dump(plain.encrypt_rows(rows, list(range(plain.slots))))
    probes = rng.standard_normal((repeats, dimension))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    decryptor = plain_backend.decryptor(public, bytearray(secret))
    matchers: dict[str, Any] = {"plain": plain}
    if "encrypted" in chosen:
        matchers["encrypted"] = _backend("encrypted").matcher(public)
    for b in block_sizes:
        matchers[f"pe-miu-{b}"] = plain_backend.matcher(public, b)
    check_main_guard()  # the matcher processes run the calling script again
    context = multiprocessing.get_context("forkserver")
    parties = [
        ProcessPoolExecutor(
            1, mp_context=context, initializer=_party_start, initargs=(public, data)
        )
        for _ in range(2 if "shared" in chosen else 0)
    ]
    edge = _backend("shared").matcher(public)
    fingerprint = sharing.fingerprint(public)
    loaded: dict[str, Any] = {}

    def identify(mode: str, probe: np.ndarray, blocks: int, registrants: int) -> tuple[float, int]:
        """Seconds of one identification over ``blocks`` blocks, and the upload bytes."""
        occupants = {slot: f"s{slot}" for slot in range(min(registrants, plain.slots))}
        if mode == "shared":
            start = time.perf_counter()
            shared = edge.encode_shares(probe)
            futures = [
                parties[0].submit(_party_score, shared.share_a, blocks),
                parties[1].submit(_party_score, shared.share_b, blocks),
            ]
            from_a, from_b = (f.result() for f in futures)
            for ra, rb in zip(from_a, from_b, strict=True):
                pair = sharing.pair(shared.nonce, ra, rb)
                _decide(decryptor.decrypt_sum(*sharing.open_pair(pair, fingerprint)), occupants)
            return time.perf_counter() - start, len(shared.share_a) + len(shared.share_b)
        matcher = matchers[mode]
        block = loaded.setdefault(mode, matcher.load(data))
        template: Any = probe
        if mode.startswith("pe-miu"):
            template = pemiu.protect(probe, int(mode.rsplit("-", 1)[1]), "arcface")
        start = time.perf_counter()
        payload = matcher.encode_probe(template)
        parsed = matcher.parse_probe(payload)
        for _ in range(blocks):
            _decide(decryptor.decrypt_scores(matcher.score(block, parsed)), occupants)
        return time.perf_counter() - start, len(payload)

    runs: dict[str, dict[str, list[float]]] = {mode: {} for mode in chosen}
    upload: dict[str, int] = {}
    try:
        if parties:
            warm = edge.encode_shares(probes[0])  # start both processes, load their kernels
            for party, share in zip(parties, (warm.share_a, warm.share_b), strict=True):
                party.submit(_party_score, share, 1).result()
        for mode in chosen:
            identify(mode, probes[0], 1, plain.slots)  # compiled kernels, loaded block
        for n in registrants:
            blocks = math.ceil(n / plain.slots)
            for round_, probe in enumerate(probes):
                for mode in chosen:
                    if round_ and n > 1_000 and mode not in ("plain", "shared"):
                        continue
                    seconds, upload[mode] = identify(mode, probe, blocks, n)
                    runs[mode].setdefault(str(n), []).append(seconds)
    finally:
        for party in parties:
            party.shutdown()
        decryptor.close()
    out: dict[str, Any] = {"preset": PRESET, "slots": plain.slots, "repeats": repeats}
    out["modes"] = {}
    for mode in chosen:
        entry: dict[str, Any] = {"upload_bytes": upload[mode], "runs": runs[mode]}
        entry["x_plain"], entry["x_plain_range"] = {}, {}
        for size, times in runs[mode].items():
            ratios = [s / p for s, p in zip(times, runs["plain"][size], strict=False)]
            entry[size] = float(np.median(times))
            entry["x_plain"][size] = float(np.median(ratios))
            entry["x_plain_range"][size] = [min(ratios), max(ratios)]
        out["modes"][mode] = entry
    return out


# ------------------------------------------------------------------------------ views
def share_view(matrix: np.ndarray) -> np.ndarray:
    """What matcher A sees of each probe in the shared mode: its share of the constants,
    residues of the fast preset's prime, lifted to (-p/2, p/2] and divided by p."""
    from frip_plugins.he_backends._fast_scorer import encode_constants, seal_primes

    from frip_engine import sharing
    from frip_engine.ckks import PRESETS

    params = PRESETS[PRESET]
    prime = seal_primes(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes))[0]
    out = np.empty_like(matrix)
    for i, row in enumerate(matrix):
        a, _ = sharing.split(encode_constants(row, 2.0**params.scale_bits), [prime])
        r = a[0].astype(np.float64)
        out[i] = np.where(r > prime / 2, r - prime, r) / prime
    return out


def view(mode: str, matrix: np.ndarray) -> np.ndarray | None:
    """What a matcher sees of each row in ``mode`` (None: a ciphertext, no attack run)."""
    if mode == "plain":
        return matrix
    if mode.startswith("pe-miu"):
        from frip_eval.eval_protection import protect_matrix

        return protect_matrix(matrix, int(mode.rsplit("-", 1)[1]), "arcface")[0]
    if mode == "shared":
        return share_view(matrix)
    return None


def invariant_features(rows: np.ndarray, block_size: int) -> np.ndarray:
    """Features no permutation of blocks changes: the sorted values, the sorted block
    norms, and each block's mean, standard deviation, minimum and maximum, ordered by
    block norm."""
    n, d = rows.shape
    blocks = rows.reshape(n, d // block_size, block_size)
    norms = np.linalg.norm(blocks, axis=2)
    order = np.argsort(norms, axis=1)
    stats = np.stack([blocks.mean(2), blocks.std(2), blocks.min(2), blocks.max(2)], axis=2)
    ordered = np.take_along_axis(stats, order[:, :, None], axis=1).reshape(n, -1)
    return np.hstack([np.sort(rows, axis=1), np.sort(norms, axis=1), ordered])


def _rank1(seen: np.ndarray, known: np.ndarray) -> float:
    """Share of rows of ``seen`` whose nearest row of ``known`` (cosine) is their own."""
    a = seen / np.linalg.norm(seen, axis=1, keepdims=True)
    b = known / np.linalg.norm(known, axis=1, keepdims=True)
    return float(np.mean(np.argmax(a @ b.T, axis=1) == np.arange(len(a))))


def _standardised(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = y.mean(0), y.std(0) + 1e-12
    return (x - mean) / std, (y - mean) / std


def _rank1_pemiu(seen: np.ndarray, known: np.ndarray, block_size: int) -> float:
    """Rank-1 with the PE-MIU comparator (the assignment undoes any block shuffle)."""
    hits = 0
    for i, row in enumerate(seen):
        scores = pemiu.compare_many(np.repeat(row[None], len(known), 0), known, block_size)
        hits += int(np.argmax(scores) == i)
    return hits / len(seen)


def attacks(
    matrix: np.ndarray,
    labels: Sequence[str],
    genders: Sequence[str],
    block_sizes: Sequence[int],
    reid_probes: int = 200,
) -> dict[str, Any]:
    """Gender SVMs and re-identification on each mode's view (see the module docstring)."""
    sample = balanced_sample(genders)
    x = matrix[sample]
    y = [genders[i] for i in sample]
    groups = [labels[i] for i in sample]
    first: dict[str, int] = {}
    second: dict[str, int] = {}
    for i, label in enumerate(labels):
        if label not in first:
            first[label] = i
        elif label not in second:
            second[label] = i
    people = sorted(second)[:reid_probes]
    known = matrix[[first[p] for p in people]]
    probes = matrix[[second[p] for p in people]]
    out: dict[str, Any] = {
        "gender_samples": len(sample),
        "gender_people": len(set(groups)),
        "reid_probes": len(people),
        "modes": {},
    }
    for mode in modes(block_sizes):
        gender_view = view(mode, x)
        if gender_view is None:
            out["modes"][mode] = {"note": "ciphertext (IND-CPA): no attack applies"}
            continue
        size = int(mode.rsplit("-", 1)[1]) if mode.startswith("pe-miu") else INVARIANT_BLOCK
        seen = view(mode, probes)
        assert seen is not None
        inv_seen, inv_known = _standardised(
            invariant_features(seen, size), invariant_features(known, size)
        )
        entry = {
            "gender": gender_accuracy(gender_view, y, groups),
            "gender_invariant": gender_accuracy(invariant_features(gender_view, size), y, groups),
            "rank1_cosine": _rank1(seen, known),
            "rank1_invariant": _rank1(inv_seen, inv_known),
        }
        if mode.startswith("pe-miu"):
            entry["rank1_pemiu_comparator"] = _rank1_pemiu(seen, known, size)
        out["modes"][mode] = entry
    return out


# ----------------------------------------------------------------------- reversibility
def forced_permutation(blocks: int, moved: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``range(blocks)`` moving exactly ``moved`` blocks (one cycle)."""
    order = np.arange(blocks)
    chosen = rng.choice(blocks, moved, replace=False)
    order[chosen] = np.roll(chosen, 1)
    return order


def reversibility(
    matrix: np.ndarray,
    labels: Sequence[str],
    block_sizes: Sequence[int],
    templates: int = 1000,
    pairs: int = 200_000,
) -> dict[str, Any]:
    """The share of PE-MIU templates, at each forced complexity, whose plain cosine with
    their own unprotected original still reaches the unprotected thresholds of FMR 1% and
    0.1% (impostor pairs of different people from ``matrix``)."""
    rng = np.random.default_rng(0)
    names = np.asarray(labels)
    a = rng.integers(0, len(matrix), pairs)
    b = rng.integers(0, len(matrix), pairs)
    impostor = np.einsum(
        "ij,ij->i", matrix[a[names[a] != names[b]]], matrix[b[names[a] != names[b]]]
    )
    thresholds = {
        "1%": float(np.quantile(impostor, 0.99)),
        "0.1%": float(np.quantile(impostor, 0.999)),
    }
    rows = matrix[rng.choice(len(matrix), min(templates, len(matrix)), replace=False)]
    out: dict[str, Any] = {"thresholds": thresholds, "templates": len(rows), "block_sizes": {}}
    for size in block_sizes:
        blocks = matrix.shape[1] // size
        levels = sorted({0, 2, 3, 4, blocks // 4, blocks // 2, 3 * blocks // 4, blocks} - {1})
        table = {}
        shaped = rows.reshape(len(rows), blocks, size)
        for moved in [m for m in levels if m <= blocks]:
            orders = np.stack([forced_permutation(blocks, moved, rng) for _ in rows])
            shuffled = shaped[np.arange(len(rows))[:, None], orders].reshape(rows.shape)
            cos = np.einsum("ij,ij->i", rows, shuffled)
            table[str(moved)] = {k: float(np.mean(cos >= t)) for k, t in thresholds.items()}
        out["block_sizes"][str(size)] = table
    return out


# ---------------------------------------------------------------------------- the run
def run_probes(
    dataset: Dataset,
    genders: Sequence[str],
    embedded: Embedded,
    block_sizes: Sequence[int] = DEFAULT_BLOCK_SIZES,
    with_cost: bool = True,
    progress: Callable[[str], None] | None = None,
    repeats: int = 3,
) -> dict[str, Any]:
    """Every table of the report (see the module docstring) for one extractor's
    embeddings of ``dataset`` (``genders`` aligned with its images)."""
    keep = [i for i in np.nonzero(embedded.ok)[0] if genders[int(i)] in ("male", "female")]
    matrix = embedded.matrix[keep]
    labels = [dataset.labels[int(i)] for i in keep]
    sex = [genders[int(i)] for i in keep]
    say = progress or (lambda _: None)
    say("attacks")
    summary: dict[str, Any] = {
        "mode": "probes",
        "extractor": embedded.extractor,
        "dataset": {
            "root": str(dataset.root),
            "images": len(dataset.paths),
            "used": len(keep),
            "identities": len(set(labels)),
        },
        "block_sizes": list(block_sizes),
        "holdings": HOLDINGS,
        "attacks": attacks(matrix, labels, sex, block_sizes),
        "published_gender": PUBLISHED_GENDER,
    }
    say("reversibility")
    summary["reversibility"] = reversibility(matrix, labels, block_sizes)
    if with_cost:
        say("cost")
        summary["cost"] = cost(block_sizes, repeats=repeats)
    return summary


def run_cost_only(
    block_sizes: Sequence[int] = DEFAULT_BLOCK_SIZES,
    only: Sequence[str] | None = None,
    repeats: int = 3,
) -> dict[str, Any]:
    """The cost section alone (no data set, no attacks): the benchmark of the probe
    modes' latency, e.g. shared against plain at 1,000 and 100,000 registrants."""
    return {
        "mode": "probes",
        "block_sizes": list(block_sizes),
        "holdings": HOLDINGS,
        "cost": cost(block_sizes, repeats=repeats, only=only),
    }


REUSED = ("extractor", "dataset", "block_sizes", "attacks", "published_gender", "reversibility")


def run_reusing(path: Path, only: Sequence[str] | None = None, repeats: int = 3) -> dict[str, Any]:
    """The attack, WIFS and reversibility figures of an earlier run's probes.json (figures
    only: no embedding is stored there) with the cost measured afresh; where the figures
    came from is kept under ``reused``. InputError for a file that is not such a run."""
    from frip_engine.errors import InputError

    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the earlier figures {path}: {exc}") from exc
    missing = [key for key in REUSED if key not in earlier] if isinstance(earlier, dict) else []
    if not isinstance(earlier, dict) or earlier.get("mode") != "probes" or missing:
        raise InputError(f"{path} is not a full 'frip eval probes' summary (missing {missing})")
    summary = {"mode": "probes", "holdings": HOLDINGS} | {key: earlier[key] for key in REUSED}
    # figures reused again keep the run they came from
    origin = {"path": str(path), "date": earlier.get("run", {}).get("date")}
    summary["reused"] = earlier.get("reused", origin)
    summary["cost"] = cost(summary["block_sizes"], repeats=repeats, only=only)
    return summary


def machine() -> dict[str, Any]:
    """What the figures were measured on: the date (UTC), the cores and the load average."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "load": [round(x, 1) for x in os.getloadavg()],
    }


# ----------------------------------------------------------------------------- report
def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(entry: dict[str, Any], n: str) -> str:
    """``x plain`` of one cell: the median ratio over rounds, with its range if it varied."""
    lo, hi = entry["x_plain_range"][n]
    spread = f" ({lo:.1f}-{hi:.1f})" if len(entry["runs"][n]) > 1 else ""
    return f"{entry['x_plain'][n]:.1f}{spread}"


def _cost_lines(cost_: dict[str, Any]) -> list[str]:
    sizes = list(cost_["modes"]["plain"]["runs"])
    head = " | ".join(f"{int(n):,} registrants | x plain (range)" for n in sizes)
    lines = [
        "",
        f"Cost (TenSEAL `{cost_['preset']}`, fast scorer, one thread per matcher; a "
        f"{cost_['slots']}-slot block scored once per block of the gallery; seconds per "
        f"identification, median of {cost_['repeats']} rounds for plain and shared, one "
        "probe per mode and round: a mode's ratio to plain is taken within a round, then "
        "its median and range over rounds):",
        "",
        f"| probe mode | upload per 512-d probe | {head} |",
        "|---|---|" + "---|---|" * len(sizes),
    ]
    for mode, entry in cost_["modes"].items():
        cells = " | ".join(f"{entry[n]:.3f} | {_ratio(entry, n)}" for n in sizes)
        lines.append(f"| {mode} | {entry['upload_bytes']:,} B | {cells} |")
    return lines


def _attack_lines(summary: dict[str, Any]) -> list[str]:
    block_sizes = summary["block_sizes"]
    attack = summary["attacks"]
    lines = [
        "",
        f"What one curious matcher learns from what it sees (gender: {attack['gender_samples']} "
        f"balanced images of {attack['gender_people']} people, 5 identity-disjoint folds, "
        f"chance {CHANCE}; re-identification: {attack['reid_probes']} people, rank-1 of the "
        "probe's view against one known embedding each, chance "
        f"{1 / attack['reid_probes']:.3f}):",
        "",
        "| probe mode | gender poly | rbf | sigmoid | gender, order-invariant (best) | "
        "rank-1 cosine | rank-1 PE-MIU comparator | rank-1 order-invariant |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, entry in attack["modes"].items():
        if "gender" not in entry:
            lines.append(f"| {mode} | {entry['note']} | | | | | | |")
            continue
        g = entry["gender"]
        lines.append(
            f"| {mode} | {_f(g['poly'])} | {_f(g['rbf'])} | {_f(g['sigmoid'])} | "
            f"{_f(max(entry['gender_invariant'].values()))} | {_f(entry['rank1_cosine'])} | "
            f"{_f(entry.get('rank1_pemiu_comparator'))} | {_f(entry['rank1_invariant'])} |"
        )
    published = summary["published_gender"]
    lines += [
        "",
        "WIFS 2023 gender table, reproduced (SVM accuracy; published: LFW, as summarised in "
        "DESIGN.md):",
        "",
        "| templates | poly | rbf | sigmoid | published |",
        "|---|---|---|---|---|",
    ]
    plain = attack["modes"]["plain"]["gender"]
    lines.append(
        f"| unprotected | {_f(plain['poly'])} | {_f(plain['rbf'])} | {_f(plain['sigmoid'])} | "
        f"~{published['unprotected']:.2f} |"
    )
    for b in block_sizes:
        g = attack["modes"][f"pe-miu-{b}"]["gender"]
        lines.append(
            f"| pe-miu block {b} | {_f(g['poly'])} | {_f(g['rbf'])} | {_f(g['sigmoid'])} | "
            f"~{published['pe-miu']:.2f} |"
        )
    rev = summary["reversibility"]
    lines += [
        "",
        "Reversibility proxy: share of PE-MIU templates still matching their own unprotected "
        f"original by plain cosine at each forced complexity (blocks moved), {rev['templates']} "
        f"templates; thresholds FMR 1% = {rev['thresholds']['1%']:.3f}, FMR 0.1% = "
        f"{rev['thresholds']['0.1%']:.3f}. A proxy only: no face generator is trained here, "
        "so it bounds what an attacker gets by ignoring the shuffle, not what image "
        "reconstruction achieves.",
        "",
        "| block | blocks moved: FMR 1% / FMR 0.1% |",
        "|---|---|",
    ]
    for size, table in rev["block_sizes"].items():
        cells = ", ".join(f"{m}: {v['1%']:.2f} / {v['0.1%']:.2f}" for m, v in table.items())
        lines.append(f"| {size} | {cells} |")
    return lines


def _produced_lines(summary: dict[str, Any]) -> list[str]:
    run = summary.get("run")
    if run is None:
        return []
    lines = [
        "",
        "## How these figures were produced",
        "",
        "```sh",
        run["command"],
        "```",
        "",
        f"Run of {run['date']} on a {run['cpus']}-core machine (load average "
        f"{run['load'][0]} at the start, {run['load_after'][0]} at the end; "
        f"{run['minutes']:.1f} min). The whole page (tables, this section and the next) is "
        "what the command writes"
        + ("; the embeddings stay in memory." if "embedded" in run else ".")
        + " The machine's other work moves the seconds; the ratios to plain, taken within "
        "each round, move less: rerun the command on a quiet machine for final figures.",
    ]
    reused = summary.get("reused")
    if reused is not None:
        when = f" (run of {reused['date']})" if reused.get("date") else ""
        lines += [
            "",
            f"The attack, WIFS 2023 and reversibility figures are those of `{reused['path']}`"
            f"{when}, reused as figures: they do not depend on the scorer, and embedding the "
            "data set again did not fit this busy machine's time. The cost was measured in "
            "this run. The whole page from scratch:",
            "",
            "```sh",
            run.get("full_command", "frip eval probes --output docs"),
            "```",
        ]
    return lines


# The explanatory text of the page; each paragraph is filled from the run's own figures
# and left out where the run did not measure them (``--cost-only``, ``--no-cost``).
READING = {
    "shared_view": (
        "- **Shared probes hide the probe from each matcher.** On what one matcher sees (its "
        "share, lifted to (-p/2, p/2] and divided by p) the gender SVMs score {gender} "
        "(chance 0.5; target within 0.02: {gender_met}), re-identification is at chance "
        "(rank-1 {rank1:.3f} cosine, {rank1_inv:.3f} order-invariant; chance {chance:.3f}), "
        "and the order-invariant attacker gets {gender_inv:.3f}. This is what the "
        "construction promises: a share is uniform in Z_p^d whatever the probe "
        "(`tests/test_shared_probes.py` also checks a chi-square and a KS test per share, "
        "and that the same test fails for a share drawn from a narrow range)."
    ),
    "upload": (
        "- **Upload**: {shared:,} B per 512-d probe for both shares (target <= 16 KB: "
        "{met}), against {plain:,} B plain{encrypted}."
    ),
    "latency": (
        "- **Latency** at {n:,} registrants: shared {shared:.3f} s against plain "
        "{plain:.3f} s, {ratio:.2f}x (range {lo:.2f}-{hi:.2f}x over {rounds}; target "
        "<= 2x: {met}). Each matcher runs the same kernel as a plain probe at about the "
        "same cost: every constant is cut into three 22-bit pieces in one pass over the "
        "gallery, whether it is a plain probe's 29-bit integer or a share's 60-bit residue "
        "(32 x 32-bit vector multiplies; the pass is bound by memory traffic). The two "
        "matchers run at the same time in processes of their own, so with a free core each "
        "the latency is about one plain probe plus the key service's additions; on a machine "
        "whose cores are busy the two matchers share them, and the ratio moves towards 2x "
        "(the range above)."
    ),
    "pemiu": (
        "- **PE-MIU**: the matcher's view (a shuffled probe) resists the cosine and SVM "
        "attackers at small blocks (gender {small}) and less so at larger ones ({large}), "
        "where each block keeps more of the face's structure. But the PE-MIU comparator "
        "itself re-identifies {comparator} of the shuffled probes against known embeddings: "
        "the shuffle does not stop linking a probe to a known face, only tools built for "
        "unprotected templates. The order-invariant attacker (sorted values, sorted block "
        "norms, block statistics) gets gender {invariant} and rank-1 <= {invariant_rank1:.3f}."
    ),
    "wifs": (
        "- **WIFS 2023 reproduced**: with {people:,} people the unprotected {extractor} "
        "gender accuracy is {plain:.3f} (RBF), against the published ~{published:.2f}; "
        "PE-MIU brings it to {blocks} (RBF), against the published ~{published_pemiu:.2f} "
        "(the paper's summary does not separate block sizes)."
    ),
    "reversibility": (
        "- **Reversibility proxy**: a protected template still matches its own unprotected "
        "original by plain cosine while at most 3/4 of its blocks moved ({three_quarters} "
        "at FMR 1%), and {all_moved} once every block moved. The engine's default "
        "(`min_complexity` = all blocks, a derangement) is therefore the setting that "
        "matters. Limits: this ignores the shuffle rather than inverting it; no face "
        "generator is trained here, so image reconstruction (the paper's attack) is not "
        "reproduced."
    ),
    "encrypted": (
        "- **Encrypted probes**: the matcher sees RLWE ciphertexts (IND-CPA), so no attack "
        "is run; the price is {mb:,.0f} MB per probe and {ratio:.1f}x plain at {n:,} "
        "registrants."
    ),
}


def _met(ok: bool) -> str:
    return "met" if ok else "**not met in this run**"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _span(values: Sequence[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def _reading_lines(summary: dict[str, Any]) -> list[str]:
    """The "Reading the figures" section: :data:`READING`, filled from ``summary``."""
    out: list[str] = []
    attack = summary.get("attacks", {}).get("modes", {})
    cost_ = summary.get("cost", {}).get("modes", {})
    if "shared" in attack:
        seen = attack["shared"]
        g = seen["gender"]
        out.append(
            READING["shared_view"].format(
                gender=" / ".join(f"{g[k]:.3f}" for k in ("poly", "rbf", "sigmoid")),
                gender_met=_met(max(abs(v - CHANCE) for v in g.values()) <= 0.02),
                rank1=seen["rank1_cosine"],
                rank1_inv=seen["rank1_invariant"],
                chance=1 / summary["attacks"]["reid_probes"],
                gender_inv=max(seen["gender_invariant"].values()),
            )
        )
    if "shared" in cost_:
        encrypted = cost_.get("encrypted")
        out.append(
            READING["upload"].format(
                shared=cost_["shared"]["upload_bytes"],
                met=_met(cost_["shared"]["upload_bytes"] <= 16 * 1024),
                plain=cost_["plain"]["upload_bytes"],
                encrypted=""
                if encrypted is None
                else f" and {encrypted['upload_bytes'] / 1e6:,.0f} MB encrypted",
            )
        )
        n = max(cost_["shared"]["runs"], key=int)
        lo, hi = cost_["shared"]["x_plain_range"][n]
        out.append(
            READING["latency"].format(
                n=int(n),
                shared=cost_["shared"][n],
                plain=cost_["plain"][n],
                ratio=cost_["shared"]["x_plain"][n],
                lo=lo,
                hi=hi,
                rounds=_count(len(cost_["shared"]["runs"][n]), "round"),
                met=_met(cost_["shared"]["x_plain"][n] <= 2.0),
            )
        )
    sizes = summary.get("block_sizes", [])
    pemiu_modes = [attack[f"pe-miu-{b}"] for b in sizes if f"pe-miu-{b}" in attack]
    if pemiu_modes:
        best = [max(m["gender"].values()) for m in pemiu_modes]
        half = max(1, len(best) // 2)
        out.append(
            READING["pemiu"].format(
                small=_span(best[:half]),
                large=_span(best[half:] or best[-1:]),
                comparator=_span([m["rank1_pemiu_comparator"] for m in pemiu_modes]),
                invariant=_span([max(m["gender_invariant"].values()) for m in pemiu_modes]),
                invariant_rank1=max(m["rank1_invariant"] for m in pemiu_modes),
            )
        )
        published = summary["published_gender"]
        blocks = ", ".join(
            f"{m['gender']['rbf']:.3f} (block {b})" for b, m in zip(sizes, pemiu_modes, strict=True)
        )
        out.append(
            READING["wifs"].format(
                people=summary["attacks"]["gender_people"],
                extractor=summary["extractor"],
                plain=attack["plain"]["gender"]["rbf"],
                published=published["unprotected"],
                blocks=blocks,
                published_pemiu=published["pe-miu"],
            )
        )
    rev = summary.get("reversibility", {}).get("block_sizes", {})
    if rev:
        quarter, full = [], []
        for table in rev.values():
            blocks_ = max(int(moved) for moved in table)  # every block moved
            quarter.append(table[str(3 * blocks_ // 4)]["1%"])
            full.append(table[str(blocks_)]["1%"])
        out.append(
            READING["reversibility"].format(
                three_quarters=_span(quarter),
                all_moved="never" if max(full) == 0 else f"at most {max(full):.1%} of them",
            )
        )
    if "encrypted" in cost_:
        n = max(cost_["encrypted"]["runs"], key=int)
        out.append(
            READING["encrypted"].format(
                mb=cost_["encrypted"]["upload_bytes"] / 1e6,
                ratio=cost_["encrypted"]["x_plain"][n],
                n=int(n),
            )
        )
    return ["", "## Reading the figures", "", *out] if out else []


def markdown(summary: dict[str, Any]) -> str:
    """The whole page: tables, how the figures were produced and how to read them."""
    if "attacks" in summary:
        title = (
            f"# Probe modes: parties, cost and a curious matcher ({summary['extractor']}, "
            f"{summary['dataset']['used']} images of {summary['dataset']['identities']} people)"
        )
    else:
        title = "# Probe modes: parties and cost"
    lines = [
        title,
        "",
        "| probe mode | edge | each matcher | key service | store |",
        "|---|---|---|---|---|",
    ]
    for family, held in summary["holdings"].items():
        lines.append(
            f"| {family} | {held['edge']} | {held['matcher']} | {held['key service']} | "
            f"{held['store']} |"
        )
    if "cost" in summary:
        lines += _cost_lines(summary["cost"])
    if "attacks" in summary:
        lines += _attack_lines(summary)
    lines += _produced_lines(summary)
    lines += _reading_lines(summary)
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> Path | None:
    """Gender accuracy (best kernel) and rank-1 per probe mode where the attacks ran, and
    the latency at the largest gallery where the cost was measured."""
    plt = pyplot()
    if plt is None:
        return None
    panels = [key for key in ("attacks", "cost") if key in summary]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        if key == "attacks":
            attack = summary["attacks"]["modes"]
            names = [m for m, e in attack.items() if "gender" in e]
            xs = np.arange(len(names))
            best = [max(attack[m]["gender"].values()) for m in names]
            ax.bar(xs - 0.2, best, 0.4, label="gender SVM")
            rank1 = [attack[m]["rank1_cosine"] for m in names]
            ax.bar(xs + 0.2, rank1, 0.4, label="rank-1 cosine")
            ax.axhline(CHANCE, color="grey", linestyle="--", linewidth=1)
            ax.set_xticks(xs, names, rotation=30, ha="right")
            ax.set_title("what one matcher learns")
            ax.legend()
        else:
            cost_ = summary["cost"]["modes"]
            n = max(cost_["plain"]["runs"], key=int)
            ax.bar(list(cost_), [e[n] for e in cost_.values()])
            ax.set_yscale("log")
            ax.set_ylabel(f"seconds per identification, {int(n):,} registrants")
            ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(summary: dict[str, Any], output: Path) -> list[Path]:
    """probes.{json,md,png} in ``output`` (probes-cost.* for a cost-only run, which
    leaves a full report beside it alone)."""
    output.mkdir(parents=True, exist_ok=True)
    stem = "probes" if "attacks" in summary else "probes-cost"
    written = [output / f"{stem}.json", output / f"{stem}.md"]
    written[0].write_text(json.dumps(summary, indent=2))
    written[1].write_text(markdown(summary))
    png = plot(summary, output / f"{stem}.png")
    return written + ([png] if png else [])
