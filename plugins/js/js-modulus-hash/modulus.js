// Pure logic of x-js-modulus-hash, importable (and tested) without the component bindings.
//
// The hash is the one the Rust plugins share (bourse-guest's `hash64`): FNV-1a over the bytes,
// then MurmurHash3's fmix64 finaliser, in BigInt arithmetic cut to 64 bits, so
// x-js-modulus-hash, x-py-modulus-hash and x-modulus-hash pick the same binding for the same
// routing key and binding ids.

const MASK64 = (1n << 64n) - 1n;
const FNV_OFFSET = 0xcbf29ce484222325n;
const FNV_PRIME = 0x00000100000001b3n;

export function fmix64(k) {
  k ^= k >> 33n;
  k = (k * 0xff51afd7ed558ccdn) & MASK64;
  k ^= k >> 33n;
  k = (k * 0xc4ceb9fe1a85ec53n) & MASK64;
  k ^= k >> 33n;
  return k;
}

/** hash64 of a Uint8Array, as a BigInt below 2^64. */
export function hash64(bytes) {
  let h = FNV_OFFSET;
  for (const b of bytes) {
    h = ((h ^ BigInt(b)) * FNV_PRIME) & MASK64;
  }
  return fmix64(h);
}

/** The bound ids (BigInts) in increasing order; the modulus picks by position. */
export class Ring {
  constructor() {
    this.ids = [];
  }

  /** Index of the first id not below `id`. */
  #lowerBound(id) {
    let lo = 0;
    let hi = this.ids.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.ids[mid] < id) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  add(id) {
    const at = this.#lowerBound(id);
    if (this.ids[at] !== id) this.ids.splice(at, 0, id);
  }

  remove(id) {
    const at = this.#lowerBound(id);
    if (this.ids[at] === id) this.ids.splice(at, 1);
  }

  /** The one id the key goes to (none without bindings). */
  pick(key) {
    if (this.ids.length === 0) return [];
    const at = hash64(key) % BigInt(this.ids.length);
    return [this.ids[Number(at)]];
  }
}
