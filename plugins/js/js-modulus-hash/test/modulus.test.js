// Native tests of the pure logic: `node --test` (from the plugin's directory).
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Ring, hash64 } from '../modulus.js';

const bytes = (s) => new TextEncoder().encode(s);

test('same values as the Rust hash', () => {
  // Pinned in plugins/guest/src/hash.rs too.
  assert.equal(hash64(bytes('')), 0xefd01f60ba992926n);
  assert.equal(hash64(bytes('a')), 0x82a2a958a9bece5bn);
  assert.equal(hash64(bytes('order.eu.42')), 0x4a3f654452954981n);
});

test('picks like x-modulus-hash', () => {
  const ring = new Ring();
  assert.deepEqual(ring.pick(bytes('k')), []);
  for (const id of [30n, 10n, 20n, 20n]) ring.add(id);
  assert.deepEqual(ring.ids, [10n, 20n, 30n]);
  // Same case as modulus-hash/src/lib.rs: 0x4a3f654452954981 % 3 == 1.
  assert.deepEqual(ring.pick(bytes('order.eu.42')), [20n]);
  ring.remove(10n);
  ring.remove(99n);
  assert.deepEqual(ring.ids, [20n, 30n]);
});
