"""CKKS parameter sets and the 128-bit security check, shared by every HE backend.

The bound is the HomomorphicEncryption.org standard's table (classical, ternary secret):
the total coefficient-modulus size, special prime included, may not exceed the value
for the ring degree. SEAL enforces the same table; checking it here gives a clear
profile error before any key is made.
"""

from __future__ import annotations

from dataclasses import dataclass

from frip_engine.errors import ProfileError, SecurityError

MAX_MODULUS_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


@dataclass(frozen=True)
class CKKSParams:
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    def describe(self) -> str:
        bits = ",".join(str(b) for b in self.coeff_mod_bit_sizes)
        return f"CKKS N={self.poly_modulus_degree} q=[{bits}] scale=2^{self.scale_bits}"

    def check(self) -> None:
        """Raise unless the parameters are 128-bit secure and can hold a plain-probe score."""
        n = self.poly_modulus_degree
        if n not in MAX_MODULUS_BITS_128:
            raise ProfileError(
                f"poly_modulus_degree {n} is not one of {sorted(MAX_MODULUS_BITS_128)}"
            )
        limit = MAX_MODULUS_BITS_128[n]
        if self.total_bits > limit:
            raise SecurityError(
                f"{self.describe()} gives less than 128-bit security: the modulus has "
                f"{self.total_bits} bits, the HE standard allows at most {limit} for N={n}"
            )
        if len(self.coeff_mod_bit_sizes) < 2:
            raise ProfileError("coeff_mod_bit_sizes needs a data prime and a special prime")
        if any(not 20 <= bits <= 60 for bits in self.coeff_mod_bit_sizes):
            raise ProfileError(f"{self.describe()}: every prime must have 20 to 60 bits (SEAL)")
        if not 20 <= self.scale_bits <= 60:
            raise ProfileError(f"{self.describe()}: scale_bits must be between 20 and 60")
        # Plain-probe scores are accumulated at scale^2 without rescaling: the product of
        # a fresh ciphertext and an encoded constant must fit the data primes with a sign bit.
        data_bits = sum(self.coeff_mod_bit_sizes[:-1])
        if 2 * self.scale_bits + 2 > data_bits:
            raise ProfileError(
                f"{self.describe()}: scale overflow, scores at scale 2^{2 * self.scale_bits} "
                f"do not fit the {data_bits}-bit data modulus (need 2*scale_bits+2 <= {data_bits})"
            )


PRESETS = {
    "paper": CKKSParams(8192, (60, 40, 40, 60), 40),
    "precise": CKKSParams(8192, (60, 40, 60), 40),
    "fast": CKKSParams(8192, (60, 60), 29),
    # Half the ring: 2,048 registrants per block, and half the upload of an encrypted probe.
    "compact": CKKSParams(4096, (54, 55), 26),
}


def params_from(
    preset: str | None = None,
    poly_modulus_degree: int | None = None,
    coeff_mod_bit_sizes: list[int] | None = None,
    scale_bits: int | None = None,
) -> CKKSParams:
    """A preset, optionally overridden field by field, checked for 128-bit security."""
    if preset is not None and preset not in PRESETS:
        raise ProfileError(f"unknown CKKS preset '{preset}' (known: {', '.join(PRESETS)})")
    base = PRESETS[preset or "fast"]
    params = CKKSParams(
        base.poly_modulus_degree if poly_modulus_degree is None else poly_modulus_degree,
        tuple(base.coeff_mod_bit_sizes if coeff_mod_bit_sizes is None else coeff_mod_bit_sizes),
        base.scale_bits if scale_bits is None else scale_bits,
    )
    params.check()
    return params
