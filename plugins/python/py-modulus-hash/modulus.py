"""Pure logic of x-py-modulus-hash, importable (and tested) without the component bindings.

The hash is the one the Rust plugins share (bourse-guest's `hash64`): FNV-1a over the bytes,
then MurmurHash3's fmix64 finaliser, so x-py-modulus-hash and x-modulus-hash pick the same
binding for the same routing key and binding ids.
"""

import bisect

MASK64 = (1 << 64) - 1
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x00000100000001B3


def fmix64(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & MASK64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & MASK64
    k ^= k >> 33
    return k


def hash64(data: bytes) -> int:
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK64
    return fmix64(h)


class Ring:
    """The bound ids in increasing order; the modulus picks by position."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def add(self, binding_id: int) -> None:
        at = bisect.bisect_left(self.ids, binding_id)
        if at == len(self.ids) or self.ids[at] != binding_id:
            self.ids.insert(at, binding_id)

    def remove(self, binding_id: int) -> None:
        at = bisect.bisect_left(self.ids, binding_id)
        if at < len(self.ids) and self.ids[at] == binding_id:
            del self.ids[at]

    def pick(self, key: bytes) -> list[int]:
        if not self.ids:
            return []
        return [self.ids[hash64(key) % len(self.ids)]]
