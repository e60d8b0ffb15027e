"""{{name}}: every binding whose key is a prefix of the routing key gets the message (an empty
key matches everything). Change `route` and the cases in cases.toml to make it yours.

Built with componentize-py (`bourse plugin build`); `wit_world` is the module it generates
from wit/exchange.wit.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types

VERSION = "0.1.0"

# One instance serves one exchange: these are that exchange's bindings, id -> key.
BINDINGS: dict[int, str] = {}


def matching(bindings: dict[int, str], routing_key: str) -> list[int]:
    """The routing rule, plain Python so that it can be tested without the component."""
    return [id for id, key in bindings.items() if routing_key.startswith(key)]


class Router(exports.Router):
    def describe(self) -> types.Description:
        return types.Description(
            name="{{name}}",
            version=VERSION,
            summary="every binding whose key is a prefix of the routing key",
        )

    def validate(self, arguments: types.FieldTable) -> None:
        # No exchange arguments of its own; `raise Err(text)` refuses a declare (406).
        return None

    def init(self, exchange: str, arguments: types.FieldTable) -> types.Inputs:
        # Ask only for what `route` reads; the same key always routes the same way, so the
        # broker may cache the answer.
        return types.Inputs(
            fields=types.InputFields.ROUTING_KEY,
            headers=types.HeaderSelection_None_(),
            cacheable=True,
        )

    def validate_binding(self, binding: types.Binding) -> None:
        if len(binding.key.encode()) > 255:
            raise Err("a binding key is at most 255 bytes")

    def add_binding(self, binding: types.Binding) -> None:
        BINDINGS[binding.id] = binding.key

    def remove_binding(self, id: int) -> None:
        BINDINGS.pop(id, None)

    def route(self, message: types.Message) -> list[int]:
        return matching(BINDINGS, message.routing_key)
