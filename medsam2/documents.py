"""Reading the JSON and YAML documents users write (configs, manifests, prompt files): a key given
twice in one object is refused, where the parsers would silently keep the last value."""

from __future__ import annotations

from typing import Any

import yaml

from medsam2.errors import InputError


def keys_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads(..., object_pairs_hook=keys_once)`: the object, or an `InputError` naming a repeated key."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise InputError(f"key {key!r} given twice in one object")
        found[key] = value
    return found


class _KeysOnceLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = []
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *defaults": keys given here override those
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (line {key_node.start_mark.line + 1})", key_node.start_mark
                )
            seen.append(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """YAML's safe subset, a mapping's repeated key refused (`yaml.YAMLError`, as for bad syntax)."""
    return yaml.load(text, Loader=_KeysOnceLoader)  # noqa: S506 - a SafeLoader subclass
