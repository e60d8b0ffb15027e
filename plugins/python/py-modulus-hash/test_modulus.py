"""Native tests of the pure logic: python3 -m unittest (from this directory)."""

import unittest

from modulus import Ring, hash64


class HashTest(unittest.TestCase):
    def test_same_values_as_the_rust_hash(self):
        # Pinned in plugins/guest/src/hash.rs too.
        self.assertEqual(hash64(b""), 0xEFD01F60BA992926)
        self.assertEqual(hash64(b"a"), 0x82A2A958A9BECE5B)
        self.assertEqual(hash64(b"order.eu.42"), 0x4A3F654452954981)


class RingTest(unittest.TestCase):
    def test_picks_like_x_modulus_hash(self):
        ring = Ring()
        self.assertEqual(ring.pick(b"k"), [])
        for binding_id in (30, 10, 20, 20):
            ring.add(binding_id)
        self.assertEqual(ring.ids, [10, 20, 30])
        # Same case as modulus-hash/src/lib.rs: 0x4a3f654452954981 % 3 == 1.
        self.assertEqual(ring.pick(b"order.eu.42"), [20])
        ring.remove(10)
        ring.remove(99)
        self.assertEqual(ring.ids, [20, 30])


if __name__ == "__main__":
    unittest.main()
