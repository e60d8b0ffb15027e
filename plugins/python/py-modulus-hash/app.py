"""x-py-modulus-hash: a Python port of x-modulus-hash, built with componentize-py.

Each message goes to exactly one binding: hash64(routing key) modulo the number of bindings,
over the bindings sorted by id. Same answers as the Rust x-modulus-hash.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types

from modulus import Ring

VERSION = "0.1.0"

# One instance serves one exchange: module state is that exchange's routing cache.
RING = Ring()


class Router(exports.Router):
    def describe(self) -> types.Description:
        return types.Description(
            name="x-py-modulus-hash",
            version=VERSION,
            summary="Python port of x-modulus-hash: one binding per message by hash modulo count",
        )

    def validate(self, arguments: types.FieldTable) -> None:
        # No arguments of its own; others (alternate-exchange, ...) belong to the broker. A
        # WIT `result<_, string>` is returned by returning normally, or refused by raising
        # `Err(text)`: the broker answers 406 PRECONDITION_FAILED with that text.
        if any(field.name == "hash-header" for field in arguments.entries):
            raise Err("x-py-modulus-hash hashes the routing key only; hash-header is not supported")
        return None

    def init(self, exchange: str, arguments: types.FieldTable) -> types.Inputs:
        return types.Inputs(
            fields=types.InputFields.ROUTING_KEY,
            headers=types.HeaderSelection_None_(),
            cacheable=True,
        )

    def validate_binding(self, binding: types.Binding) -> None:
        return None

    def add_binding(self, binding: types.Binding) -> None:
        RING.add(binding.id)

    def remove_binding(self, id: int) -> None:
        RING.remove(id)

    def route(self, message: types.Message) -> list[int]:
        return RING.pick(message.routing_key.encode())
