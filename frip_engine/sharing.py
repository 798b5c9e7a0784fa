"""The ``shared`` probe mode's plumbing: two matchers that do not collude, one share each.

At the edge the probe is encoded as the plain probe's integer constants ``k_j`` (one
residue per data limb) and split into two additive shares ``a_j + b_j = k_j (mod p)``,
``a_j`` uniform in Z_p (:func:`uniform_residues`, from the operating system's CSPRNG).
Matcher A scores ``sum_j a_j ct_j``, matcher B ``sum_j b_j ct_j``, each in processes of its
own holding the public context only (:class:`SharedScorer`); the key service adds the two
score ciphertexts (mod q per limb: a public operation) and decrypts, which gives the plain
probe's result bit for bit. One share alone is a uniformly random vector: it says nothing
about the probe unless the two matchers pool their shares.

Who holds what: the edge (the engine process: it extracts the embedding and holds the
probe) makes both shares and sends each to its own matcher; each matcher process holds the
public context, the encrypted gallery and one share; the key service holds the secret key
and sees the two score ciphertexts and the decrypted scores, never a share.

Binding: the edge draws a fresh 16-byte nonce per probe and writes it into both shares;
each matcher echoes it, its party (A or B) and the fingerprint of its public context in
the score envelope (:class:`ShareResult`); the key service decides only on one A and one B
result of the probe's own nonce under its own public context, and refuses anything else
(:class:`~frip_engine.errors.ShareError`): never a decision from one share.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from frip_engine.contracts import BlockInfo
from frip_engine.errors import FripError, ShareError
from frip_engine.framing import frame, unframe
from frip_engine.parallel import ParallelScorer, WorkerSetup, context_fingerprint

NONCE_BYTES = 16
PARTIES = (b"A", b"B")
BUNDLE_TAG = b"FRIP-SHB"  # the edge's two shares of one probe (never sent to a matcher)
RESULT_TAG = b"FRIP-SHR"  # one matcher's scores of one share on one block
PAIR_TAG = b"FRIP-SHP"  # what the key service combines: nonce, result A, result B


def fingerprint(public_context: bytes) -> bytes:
    """Which public context (so which key version) a share was scored under: the hex
    SHA-256 the worker processes also stamp new blocks with."""
    return context_fingerprint(public_context).encode()


def uniform_residues(prime: int, count: int) -> np.ndarray:
    """``count`` values uniform in [0, prime) as uint64, from ``secrets.token_bytes`` (the
    operating system's CSPRNG): 64-bit words masked to the prime's bit length, those >= the
    prime drawn again (rejection: exactly uniform, no modulo bias; at most half are redrawn
    for SEAL's primes, which lie above 2^(bits-1))."""
    if not 1 < prime < 2**63:
        raise ShareError(f"a share modulus must lie in (1, 2^63), not {prime}")
    mask = np.uint64((1 << prime.bit_length()) - 1)
    out = np.empty(count, dtype=np.uint64)
    filled = 0
    while filled < count:
        need = count - filled
        words = np.frombuffer(secrets.token_bytes(8 * need), dtype="<u8") & mask
        kept = words[words < np.uint64(prime)]
        out[filled : filled + kept.size] = kept
        filled += kept.size
    return out


def split(constants: np.ndarray, primes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Two additive shares of int64 constants (d,) per limb: uint64 (limbs, d) arrays ``a``
    uniform in Z_p and ``b = k - a mod p``, so ``a + b = k (mod p)`` for every limb's prime."""
    ks = np.asarray(constants, dtype=np.int64)
    a = np.empty((len(primes), ks.size), dtype=np.uint64)
    b = np.empty_like(a)
    for limb, prime in enumerate(primes):
        p = int(prime)
        k = np.mod(ks, p).astype(np.uint64)  # numpy's mod of an int64 is >= 0 for p > 0
        a[limb] = uniform_residues(p, ks.size)
        b[limb] = np.where(k >= a[limb], k - a[limb], k + (np.uint64(p) - a[limb]))
    return a, b


@dataclass(frozen=True)
class SharedProbe:
    """The edge's two shares of one probe: serialised share payloads for matcher A and B."""

    nonce: bytes
    share_a: bytes
    share_b: bytes

    def to_bytes(self) -> bytes:
        return frame(BUNDLE_TAG, [self.nonce, self.share_a, self.share_b])

    @classmethod
    def from_bytes(cls, data: bytes) -> SharedProbe:
        parts = unframe(BUNDLE_TAG, data, ShareError)
        if len(parts) != 3 or len(parts[0]) != NONCE_BYTES:
            raise ShareError("a shared probe is a nonce and two shares")
        return cls(parts[0], parts[1], parts[2])


@dataclass(frozen=True)
class ShareResult:
    """One matcher's encrypted scores of one share on one block, with what binds them: the
    probe's nonce, the matcher's party and its public context's fingerprint."""

    nonce: bytes
    party: bytes
    fingerprint: bytes
    scores: bytes

    def to_bytes(self) -> bytes:
        return frame(RESULT_TAG, [self.nonce, self.party, self.fingerprint, self.scores])

    @classmethod
    def from_bytes(cls, data: bytes) -> ShareResult:
        parts = unframe(RESULT_TAG, data, ShareError)
        if len(parts) != 4 or len(parts[0]) != NONCE_BYTES or parts[1] not in PARTIES:
            raise ShareError("a share's scores are malformed (nonce, party, key, scores)")
        return cls(*parts)


def pair(nonce: bytes, result_a: bytes | None, result_b: bytes | None) -> bytes:
    """What the key service combines for one probe and block: the nonce the edge drew and
    the two matchers' results (b"" for a missing one, which the key service refuses)."""
    return frame(PAIR_TAG, [nonce, result_a or b"", result_b or b""])


def is_pair(data: bytes) -> bool:
    return data.startswith(PAIR_TAG)


def open_pair(data: bytes, fingerprint: bytes) -> tuple[bytes, bytes]:
    """The two score ciphertexts (A's, B's) of a :func:`pair`, after checking that both
    results are there, are one A and one B, carry the edge's nonce and were made under the
    public context of ``fingerprint``. Raises ShareError otherwise."""
    parts = unframe(PAIR_TAG, data, ShareError)
    if len(parts) != 3:
        raise ShareError("a share pair is a nonce and two results")
    nonce, *raw = parts
    if not all(raw):
        missing = " and ".join(p.decode() for p, r in zip(PARTIES, raw, strict=True) if not r)
        raise ShareError(f"matcher {missing}'s scores are missing: one share alone decides nothing")
    results = [ShareResult.from_bytes(r) for r in raw]
    if [r.party for r in results] != list(PARTIES):
        raise ShareError("the two scores are not one of matcher A and one of matcher B")
    for result in results:
        if result.nonce != nonce:
            raise ShareError(
                f"matcher {result.party.decode()} scored a share of another probe (nonce "
                "differs): a share replayed with another probe's partner is refused"
            )
        if result.fingerprint != fingerprint:
            raise ShareError(
                f"matcher {result.party.decode()} scored under another public context than "
                "the key service's (another key version): refused"
            )
    return results[0].scores, results[1].scores


class SharedScorer:
    """Matcher A and matcher B: each its own worker processes (built from the public
    context only, as :class:`~frip_engine.parallel.ParallelScorer` builds them), each
    given only its own share of every probe; both parties score at the same time."""

    def __init__(self, setup: WorkerSetup, workers_per_party: int) -> None:
        self.parties = (
            ParallelScorer(setup, workers_per_party),
            ParallelScorer(setup, workers_per_party),
        )
        self._side = ThreadPoolExecutor(1, thread_name_prefix="frip-matcher-a")
        self.key_version = setup.key_version

    def score_many(
        self, jobs: list[tuple[BlockInfo, tuple[SharedProbe, ...]]]
    ) -> list[list[bytes | FripError]]:
        """For each (block, shared probes): each probe's :func:`pair` of its two matchers'
        results on the block, or the error of a probe either matcher refused."""
        a_jobs = [(info, tuple(p.share_a for p in probes)) for info, probes in jobs]
        b_jobs = [(info, tuple(p.share_b for p in probes)) for info, probes in jobs]
        a_future = self._side.submit(self.parties[0].score_many, a_jobs)
        b_answers = self.parties[1].score_many(b_jobs)
        a_answers = a_future.result()
        out: list[list[bytes | FripError]] = []
        for (_, probes), a_row, b_row in zip(jobs, a_answers, b_answers, strict=True):
            row: list[bytes | FripError] = []
            for probe, a, b in zip(probes, a_row, b_row, strict=True):
                if isinstance(a, FripError):
                    row.append(a)
                elif isinstance(b, FripError):
                    row.append(b)
                else:
                    row.append(pair(probe.nonce, a, b))
            out.append(row)
        return out

    def close(self) -> None:
        for party in self.parties:
            party.close()
        self._side.shutdown()
